//! `ObjectPath`: a datastore-relative name that cannot escape a root.
//!
//! Every name that comes from a datastore listing, a manifest or the command line is parsed
//! into an `ObjectPath` once. Parsing refuses anything that could leave a directory when joined
//! onto it (`..`, `.`, empty segments, absolute paths, backslashes, NUL, over-long segments), so
//! code that writes local files only ever sees names that are safe by construction.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest segment a local filesystem accepts (Linux `NAME_MAX`).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest blob name Azure accepts; a longer name cannot come from a real store.
pub const MAX_PATH_BYTES: usize = 1024;

/// A normalised, relative, `/`-separated object name. The empty path is the root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectPath(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("contains a '..' segment")]
    ParentSegment,
    #[error("contains a '.' segment")]
    DotSegment,
    #[error("contains an empty segment ('//')")]
    EmptySegment,
    #[error("is absolute")]
    Absolute,
    #[error("contains a backslash")]
    Backslash,
    #[error("contains a NUL or control character")]
    ControlCharacter,
    #[error("has a segment longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong,
    #[error("is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

impl ObjectPath {
    /// The root of a datastore (empty name).
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Strictly parses a store name: no leading or trailing `/`, no empty, `.` or `..` segments.
    /// Use this for names a store returns; anything odd there is refused, not repaired.
    pub fn parse(name: &str) -> Result<Self, PathError> {
        if name.is_empty() {
            return Ok(Self::root());
        }
        if name.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if name.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        for segment in name.split('/') {
            check_segment(segment)?;
        }
        Ok(Self(name.to_owned()))
    }

    /// Leniently normalises a user-written path (`path_on_datastore`, `--prefix`):
    /// `./bar`, `/bar`, `bar/` and `bar//baz` are accepted; `.` segments are dropped; empty,
    /// `.` and `/` mean the root. `..` is still refused: it has no meaning inside a datastore.
    pub fn normalize(user: &str) -> Result<Self, PathError> {
        let mut segments = Vec::new();
        for segment in user.split('/') {
            match segment {
                "" | "." => continue,
                _ => {
                    check_segment(segment)?;
                    segments.push(segment);
                }
            }
        }
        let joined = segments.join("/");
        if joined.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(Self(joined))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The last segment, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<ObjectPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => Self(self.0[..i].to_owned()),
            None => Self::root(),
        })
    }

    /// Appends one more validated path.
    pub fn join(&self, other: &ObjectPath) -> ObjectPath {
        match (self.is_root(), other.is_root()) {
            (_, true) => self.clone(),
            (true, false) => other.clone(),
            (false, false) => Self(format!("{}/{}", self.0, other.0)),
        }
    }

    /// Appends one segment, validating it.
    pub fn child(&self, segment: &str) -> Result<ObjectPath, PathError> {
        check_segment(segment)?;
        let mut joined = self.clone();
        if !joined.0.is_empty() {
            joined.0.push('/');
        }
        joined.0.push_str(segment);
        if joined.0.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(joined)
    }

    /// `self` relative to `base` when `self` is `base` or lies under `base/` (segment-aware:
    /// `a/b_v2` is not under `a/b`).
    pub fn strip_prefix(&self, base: &ObjectPath) -> Option<ObjectPath> {
        if base.is_root() {
            return Some(self.clone());
        }
        if self.0 == base.0 {
            return Some(Self::root());
        }
        self.0
            .strip_prefix(base.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| Self(rest.to_owned()))
    }

    /// True when `self` is `base` or lies under it.
    pub fn starts_with(&self, base: &ObjectPath) -> bool {
        self.strip_prefix(base).is_some()
    }

    /// The local path of this name under `root`. Always inside `root`: the type admits no
    /// segment that could climb out.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        for segment in self.segments() {
            path.push(segment);
        }
        path
    }
}

fn check_segment(segment: &str) -> Result<(), PathError> {
    match segment {
        "" => Err(PathError::EmptySegment),
        "." => Err(PathError::DotSegment),
        ".." => Err(PathError::ParentSegment),
        _ if segment.contains('\\') => Err(PathError::Backslash),
        _ if segment.chars().any(|c| c.is_control()) => Err(PathError::ControlCharacter),
        _ if segment.len() > MAX_SEGMENT_BYTES => Err(PathError::SegmentTooLong),
        _ => Ok(()),
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str("/")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectPath({:?})", self.0)
    }
}

impl serde::Serialize for ObjectPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component;

    #[test]
    fn normalize_accepts_the_spec_spellings() {
        for spelling in ["./bar", "/bar", "bar/", "bar", "//bar//", "./././bar"] {
            assert_eq!(
                ObjectPath::normalize(spelling).unwrap().as_str(),
                "bar",
                "{spelling}"
            );
        }
        for root in ["", ".", "/", "./", "//"] {
            assert!(ObjectPath::normalize(root).unwrap().is_root(), "{root:?}");
        }
        assert_eq!(ObjectPath::normalize("a/./b").unwrap().as_str(), "a/b");
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(
            ObjectPath::normalize("a/../b"),
            Err(PathError::ParentSegment)
        );
        assert_eq!(ObjectPath::normalize(".."), Err(PathError::ParentSegment));
        assert_eq!(ObjectPath::parse("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(ObjectPath::parse("a//b"), Err(PathError::EmptySegment));
        assert_eq!(ObjectPath::parse("a/./b"), Err(PathError::DotSegment));
        assert_eq!(ObjectPath::parse("a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(ObjectPath::parse("a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(
            ObjectPath::parse(&"x".repeat(256)),
            Err(PathError::SegmentTooLong)
        );
        assert_eq!(
            ObjectPath::parse(&"x/".repeat(600)),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn strip_prefix_is_segment_aware() {
        let base = ObjectPath::parse("a/b").unwrap();
        assert_eq!(
            ObjectPath::parse("a/b/x")
                .unwrap()
                .strip_prefix(&base)
                .unwrap()
                .as_str(),
            "x"
        );
        assert!(
            ObjectPath::parse("a/b")
                .unwrap()
                .strip_prefix(&base)
                .unwrap()
                .is_root()
        );
        assert!(
            ObjectPath::parse("a/b_v2.csv")
                .unwrap()
                .strip_prefix(&base)
                .is_none()
        );
        assert!(
            ObjectPath::parse("a/bc/x")
                .unwrap()
                .strip_prefix(&base)
                .is_none()
        );
    }

    #[test]
    fn parent_and_file_name() {
        let p = ObjectPath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), Some("c.txt"));
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert!(ObjectPath::parse("c").unwrap().parent().unwrap().is_root());
        assert_eq!(ObjectPath::root().parent(), None);
    }

    /// Any string, including hostile ones: mostly path-ish characters so that `..`, `/`, `.`
    /// and backslashes appear often.
    fn hostile_string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just("\0".to_string()),
                Just("a".to_string()),
                Just("é".to_string()),
                "[a-z.]{1,3}",
                any::<String>(),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn normalized_paths_never_leave_their_root(input in hostile_string()) {
            let root = Path::new("/target/root");
            for path in [ObjectPath::normalize(&input), ObjectPath::parse(&input)].into_iter().flatten() {
                {
                    let local = path.to_local(root);
                    prop_assert!(local.starts_with(root));
                    // Every component after the root is a plain name: nothing climbs out.
                    for component in local.strip_prefix(root).unwrap().components() {
                        prop_assert!(matches!(component, Component::Normal(_)), "{local:?}");
                    }
                    prop_assert_eq!(
                        local.strip_prefix(root).unwrap().components().count(),
                        path.segments().count()
                    );
                }
            }
        }

        #[test]
        fn normalize_is_idempotent(input in hostile_string()) {
            if let Ok(once) = ObjectPath::normalize(&input) {
                let twice = ObjectPath::normalize(once.as_str()).unwrap();
                prop_assert_eq!(&once, &twice);
                prop_assert_eq!(ObjectPath::parse(once.as_str()).unwrap(), once);
            }
        }
    }
}
