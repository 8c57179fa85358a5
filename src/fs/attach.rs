//! Mounting a FUSE connection on an open file descriptor with the new mount API (`fsopen`,
//! `fsconfig`, `fsmount`, `move_mount`), and unmounting exactly that mount. Root never resolves
//! a path a user controls here: the mount point arrives as a descriptor (opened and checked by
//! the caller), the mount is attached to the very file that descriptor is, and the unmount goes
//! through `/proc/self/fd/<that descriptor>` after the mount table confirms that our mount,
//! uncovered, is still the one sitting there.
//!
//! Why not unmount through the descriptor `fsmount` returns: any open descriptor on a mount
//! pins it, so a plain `umount2` of it always fails with `EBUSY` and only a lazy detach would
//! work, leaving "a file is still open" indistinguishable from "idle" (and an administrator's
//! `umount` would be refused for as long as dataref lives). The descriptor is therefore closed
//! once the mount is attached and only its id is kept.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
};

use super::cleanup::{fd_mount_id, read_mountinfo};

/// How the FUSE superblock is made.
pub(super) struct Options<'a> {
    /// The mount source (`dataref:<job>:<ref>`).
    pub fsname: &'a str,
    /// `allow_other` and `default_permissions`.
    pub allow_other: bool,
    /// The largest read request.
    pub max_read: u32,
}

/// A FUSE superblock made for a `/dev/fuse` connection, not yet attached anywhere. The kernel
/// has queued its INIT request on the connection.
pub(super) struct Created {
    /// The filesystem context (`fsopen`); closing it before `attach` destroys the superblock
    /// and ends the connection.
    context: OwnedFd,
}

/// Opens `/dev/fuse` and makes a FUSE superblock served through it, whose root has the type and
/// permissions of `target` (as the kernel requires to mount on it). Returns the connection
/// (where INIT now waits) and the superblock.
pub(super) fn create(target: &OwnedFd, options: &Options) -> io::Result<(OwnedFd, Created)> {
    let root = rustix::fs::fstat(target)?;
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let context = fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let configured = (|| {
        fsconfig_set_string(&context, "source", options.fsname)?;
        fsconfig_set_string(&context, "subtype", "dataref")?;
        fsconfig_set_string(&context, "fd", dev.as_raw_fd().to_string())?;
        fsconfig_set_string(&context, "rootmode", format!("{:o}", root.st_mode))?;
        // The connection belongs to this process's user (root): only they may unmount it
        // through fusermount, never the job's user.
        fsconfig_set_string(
            &context,
            "user_id",
            nix::unistd::geteuid().as_raw().to_string(),
        )?;
        fsconfig_set_string(
            &context,
            "group_id",
            nix::unistd::getegid().as_raw().to_string(),
        )?;
        fsconfig_set_string(&context, "max_read", options.max_read.to_string())?;
        if options.allow_other {
            fsconfig_set_flag(&context, "default_permissions")?;
            fsconfig_set_flag(&context, "allow_other")?;
        }
        fsconfig_set_flag(&context, "ro")?;
        fsconfig_create(&context)
    })();
    configured.map_err(|e| with_kernel_message(&context, e.into()))?;
    Ok((dev, Created { context }))
}

/// The kernel's own words for a failed `fsconfig` (it logs them on the context descriptor).
fn with_kernel_message(context: &OwnedFd, error: io::Error) -> io::Error {
    let mut buf = [0u8; 256];
    match rustix::io::read(context, &mut buf) {
        Ok(n) if n > 2 => {
            let message = String::from_utf8_lossy(&buf[2..n]).trim().to_owned();
            io::Error::new(error.kind(), format!("{error} ({message})"))
        }
        _ => error,
    }
}

/// Attaches `created` on the file `target` is (read-only, nosuid, nodev, noatime) and returns
/// what identifies the attached mount.
pub(super) fn attach(created: Created, target: OwnedFd, fsname: &str) -> io::Result<Attached> {
    let attrs = MountAttrFlags::MOUNT_ATTR_RDONLY
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOATIME;
    let mount = fsmount(&created.context, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        &mount,
        "",
        &target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    let ids = fd_mount_id(&mount).zip(fd_mount_id(&target));
    let attached = Attached {
        target,
        mount_id: 0,
        parent_id: 0,
        fsname: fsname.to_owned(),
    };
    match ids {
        Some((mount_id, parent_id)) => Ok(Attached {
            mount_id,
            parent_id,
            ..attached
        }),
        None => {
            // Without its id the mount could never be unmounted safely: take it down now,
            // through the descriptor that surely is it.
            let _ = rustix::mount::unmount(proc_fd(&mount), UnmountFlags::DETACH);
            Err(io::Error::other("cannot read the new mount's id"))
        }
    }
    // `mount` is closed here: holding it would pin the mount (see the module's note).
}

/// An attached mount, known by its id and the descriptor of the file it is mounted on.
#[derive(Debug)]
pub(super) struct Attached {
    /// The mount point (a directory or file in its parent mount): pins that file, so that no
    /// rename of it or of its parents changes what `/proc/self/fd/<target>` leads to.
    target: OwnedFd,
    /// Ours, and the parent mount's, as `/proc/self/mountinfo` shows them.
    mount_id: u64,
    parent_id: u64,
    fsname: String,
}

/// Where an unmount stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unmounted {
    /// Our mount left the namespace now.
    Now,
    /// It had already gone (someone unmounted it).
    AlreadyGone,
}

impl Attached {
    /// Unmounts our mount (lazily: `MNT_DETACH`). `EBUSY` (without `lazy`) when a file in it
    /// is open. Refuses when the mount table shows our mount moved or covered by another
    /// mount, since the kernel would then unmount what lies on top instead.
    pub fn unmount(&self, lazy: bool) -> io::Result<Unmounted> {
        if !self.still_ours()? {
            return Ok(Unmounted::AlreadyGone);
        }
        let flags = match lazy {
            true => UnmountFlags::DETACH,
            false => UnmountFlags::empty(),
        };
        // The kernel resolves the mount point's descriptor to the topmost mount on that very
        // file, which `still_ours` just found to be ours. (Only root could change the mounts
        // there in between.)
        match rustix::mount::unmount(proc_fd(&self.target), flags) {
            Ok(()) => Ok(Unmounted::Now),
            Err(rustix::io::Errno::INVAL) if !self.still_ours()? => Ok(Unmounted::AlreadyGone),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether our mount is still attached where we put it, with nothing mounted over it.
    fn still_ours(&self) -> io::Result<bool> {
        let table = read_mountinfo()?;
        let Some(ours) = table
            .iter()
            .find(|e| e.mount_id == self.mount_id && e.source == self.fsname)
        else {
            return Ok(false);
        };
        if ours.parent_id != self.parent_id {
            return Err(io::Error::other(format!(
                "the mount at {} was moved by someone else; not unmounting it",
                ours.mount_point.display()
            )));
        }
        let covered = table
            .iter()
            .any(|e| e.parent_id == self.mount_id && e.mount_point == ours.mount_point);
        if covered {
            return Err(io::Error::other(format!(
                "another mount covers the mount at {}; not unmounting it",
                ours.mount_point.display()
            )));
        }
        Ok(true)
    }
}

/// `/proc/self/fd/<fd>`: a path to exactly the file `fd` is, whatever its name now.
fn proc_fd(fd: &impl AsFd) -> PathBuf {
    Path::new("/proc/self/fd").join(fd.as_fd().as_raw_fd().to_string())
}
