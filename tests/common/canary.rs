//! Root's things an attack must leave alone: root-only folders and files, a fingerprint of a
//! tree (type, mode, owner, mtime, contents) to compare before and after, where a secret's text
//! ended up, and a guard that takes down any mount left under a test's folder.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One entry of a [`fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub contents: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
}

/// Every entry under `root` and `root` itself (as ""), symlinks not followed: any file or
/// folder created, removed, rewritten, touched, chmod-ed or chown-ed shows as a difference.
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

fn visit(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let kind = if meta.file_type().is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "dir"
    } else if meta.is_file() {
        "file"
    } else {
        "other"
    };
    out.insert(
        path.strip_prefix(root).unwrap().to_path_buf(),
        Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            contents: (kind == "file").then(|| std::fs::read(path).unwrap_or_default()),
            target: std::fs::read_link(path).ok(),
        },
    );
    if kind == "dir"
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            visit(root, &entry.path(), out);
        }
    }
}

/// Creates `dir` owned by root with `mode`, and in it each `(relative path, contents)` as a
/// root file 0600 (folders on the way: root's, 0755).
pub fn root_dir(dir: &Path, mode: u32, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir.to_path_buf()
}

/// The regular files under `root` (links not followed) whose contents include `needle`.
pub fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    fingerprint(root)
        .into_iter()
        .filter(|(_, node)| {
            node.contents
                .as_ref()
                .is_some_and(|c| String::from_utf8_lossy(c).contains(needle))
        })
        .map(|(path, _)| root.join(path))
        .collect()
}

/// The mount points (this namespace) at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap().to_owned();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p == dir || p.starts_with(&format!("{dir}/")))
        .map(str::to_owned)
        .collect()
}

/// Lazily unmounts whatever is still mounted under its folder when dropped (deepest first), so
/// a failed test leaves no mount behind.
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        let mut left = mounts_under(&self.0);
        left.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in left {
            let _ = std::process::Command::new("umount")
                .args(["-l", &point])
                .status();
        }
    }
}

/// What differs between two [`fingerprint`]s, one line per path ("" = the folder itself);
/// empty when nothing changed.
pub fn changes(before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let show = |node: &Node| {
        format!(
            "{} {:o} {}:{} mtime {}.{:09}{}{}",
            node.kind,
            node.mode,
            node.uid,
            node.gid,
            node.mtime.0,
            node.mtime.1,
            node.contents
                .as_ref()
                .map(|c| format!(" {:?}", String::from_utf8_lossy(c)))
                .unwrap_or_default(),
            node.target
                .as_ref()
                .map(|t| format!(" -> {}", t.display()))
                .unwrap_or_default()
        )
    };
    let mut out = Vec::new();
    for (path, node) in before {
        match after.get(path) {
            None => out.push(format!("removed {:?}: was {}", path, show(node))),
            Some(now) if now != node => out.push(format!(
                "changed {:?}: {} => {}",
                path,
                show(node),
                show(now)
            )),
            Some(_) => {}
        }
    }
    for (path, node) in after {
        if !before.contains_key(path) {
            out.push(format!("created {:?}: {}", path, show(node)));
        }
    }
    out
}

/// A root tree's fingerprint taken now, to compare with later.
pub struct Canary {
    pub root: PathBuf,
    pub before: BTreeMap<PathBuf, Node>,
}

impl Canary {
    pub fn new(root: &Path) -> Self {
        Canary {
            root: root.to_path_buf(),
            before: fingerprint(root),
        }
    }

    /// What changed under the root since [`Canary::new`].
    pub fn changes(&self) -> Vec<String> {
        changes(&self.before, &fingerprint(&self.root))
    }
}
