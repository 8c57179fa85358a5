//! Looking at local directory trees.

use std::path::Path;

/// Every non-directory under `root` (symlinks are not followed), relative to it, sorted. Empty
/// when `root` does not exist.
pub fn files(root: &Path) -> Vec<String> {
    listing(root, false)
}

/// Every entry under `root` (symlinks are not followed), relative to it, sorted; directories
/// end in `/`. Empty when `root` does not exist.
pub fn tree(root: &Path) -> Vec<String> {
    listing(root, true)
}

fn listing(root: &Path, with_dirs: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                if with_dirs {
                    out.push(format!("{relative}/"));
                }
                stack.push(path);
            } else {
                out.push(relative);
            }
        }
    }
    out.sort();
    out
}

/// The names in `dir` (not recursive), sorted.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A file's text; panics naming the file.
#[track_caller]
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `contents` to `path`, creating its parents.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// Reads `file` to its end in 1 MiB reads (as an application streaming it would), failing at
/// the first byte that differs from `expected` and unless the lengths match.
#[track_caller]
pub fn assert_reads_as(file: &mut std::fs::File, expected: &[u8], name: &str) {
    use std::io::Read;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut offset = 0;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            offset + n <= expected.len() && buf[..n] == expected[offset..offset + n],
            "{name} differs at {offset}"
        );
        offset += n;
    }
    assert_eq!(offset, expected.len(), "{name}: length");
}
