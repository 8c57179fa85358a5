//! A small tmpfs for disk-full tests (root can mount one).

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
