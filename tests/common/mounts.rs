//! Mount inspection through `/proc/<pid>/mountinfo`.

use std::path::Path;

/// This process's mount table.
pub fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// The mount points (field 5) of a mount table's lines.
pub fn mount_points(table: &str) -> impl Iterator<Item = &str> {
    table.lines().filter_map(|l| l.split(' ').nth(4))
}

/// Whether `table` (a mountinfo text) has a mount at `path`.
pub fn has_mount_point(table: &str, path: &Path) -> bool {
    let wanted = path.to_str().unwrap();
    mount_points(table).any(|p| p == wanted)
}

/// Whether something is mounted at `path` in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    has_mount_point(&mountinfo(), path)
}

/// Mount points of dataref FUSE mounts whose line contains `needle`.
pub fn dataref_mounts(needle: &str) -> Vec<String> {
    mountinfo()
        .lines()
        .filter(|l| l.contains(" - fuse") && l.contains("dataref:") && l.contains(needle))
        .map(|l| l.split(' ').nth(4).unwrap().to_owned())
        .collect()
}

/// The mount configuration of an in-process test mount: a `dataref:` fsname naming the test's
/// `job` and pid, for the caller's user only.
pub fn test_config(job: &str) -> dataref::fs::fuse::MountConfig {
    dataref::fs::fuse::MountConfig {
        fsname: format!("dataref:test-{job}.{}:data", std::process::id()),
        allow_other: false,
        owner: None,
    }
}

/// Blocking filesystem work, run off the runtime's workers (which serve an in-process mount).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
