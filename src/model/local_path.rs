//! How user-written local paths resolve: against a base directory, lexically (the path may not
//! exist yet, so it cannot be canonicalised).

use std::path::{Component, Path, PathBuf};

/// Resolves a user-written path against `base` and removes `.` and `..` lexically (the path
/// may not exist yet, so it cannot be canonicalised).
pub fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let joined = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        base.join(path)
    };
    normalize_lexically(&joined)
}

/// `/a/./b/../c` → `/a/c`. A `..` at the root stays at the root.
pub fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.parent() {
                Some(_) => {
                    out.pop();
                }
                // `/..` is `/`; a relative path keeps its leading `..`.
                None if out.as_os_str().is_empty() => out.push(".."),
                None => {}
            },
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalisation() {
        assert_eq!(
            normalize_lexically(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
        assert_eq!(
            normalize_lexically(Path::new("/a/../../b")),
            PathBuf::from("/b")
        );
        assert_eq!(
            resolve_path(Path::new("/w"), "./out/"),
            PathBuf::from("/w/out")
        );
        assert_eq!(resolve_path(Path::new("/w"), "/abs"), PathBuf::from("/abs"));
        assert_eq!(
            resolve_path(Path::new("/w/x"), "../y"),
            PathBuf::from("/w/y")
        );
    }
}
