//! A small tmpfs for disk-full tests (root can mount one), and a file of one bind-mounted
//! elsewhere.

use std::path::{Path, PathBuf};

/// A tmpfs mounted for the test; unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Self {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(at).unwrap();
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a tmpfs (needs root)");
        Self(at.to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Bytes an unprivileged writer could still write.
    pub fn free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Tmpfs {
    /// Fills the tmpfs to its last byte (a `filler` file); writes then fail with ENOSPC.
    pub fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
        assert_eq!(self.free(), 0, "the tmpfs is full");
    }
}

/// A file bind-mounted over another (`target` must exist); unmounted when dropped.
pub struct BindMount(PathBuf);

impl BindMount {
    pub fn new(source: &Path, target: &Path) -> Self {
        use nix::mount::{MsFlags, mount};
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind-mounting a file (needs root)");
        Self(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
