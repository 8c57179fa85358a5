//! Helpers shared by the backends.

use bytes::Bytes;

use super::{ListPage, ObjectMeta, ObjectPath, Result, StoreError};

/// Cuts a name-ordered listing into pages; the continuation is the last name returned, with a
/// `d:`/`o:` tag because a blob and a directory may share a name in flat namespaces.
pub(crate) fn paginate(
    mut entries: Vec<(String, bool, ListedItem)>,
    continuation: Option<&str>,
    page_size: Option<usize>,
) -> ListPage {
    entries.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    let start = match continuation {
        Some(token) => {
            let (is_dir, name) = match token.split_once(':') {
                Some(("d", name)) => (true, name),
                Some((_, name)) => (false, name),
                None => (false, token),
            };
            entries.partition_point(|(n, d, _)| (n.as_str(), *d) <= (name, is_dir))
        }
        None => 0,
    };
    let end = match page_size {
        Some(size) => (start + size).min(entries.len()),
        None => entries.len(),
    };
    let mut page = ListPage::default();
    for (_, _, item) in entries[start..end].iter().cloned() {
        match item {
            ListedItem::Object(meta) => page.objects.push(meta),
            ListedItem::Directory(path) => page.directories.push(path),
        }
    }
    if end < entries.len() {
        let (name, is_dir, _) = &entries[end - 1];
        page.continuation = Some(format!("{}:{name}", if *is_dir { "d" } else { "o" }));
    }
    page
}

/// What `paginate` hands out.
#[derive(Debug, Clone)]
pub(crate) enum ListedItem {
    Object(ObjectMeta),
    Directory(ObjectPath),
}

/// Checks a part against the declared size and the backend's part limit; shared by backends.
pub(crate) fn check_part(
    path: &ObjectPath,
    total_size: u64,
    max_part_size: u64,
    offset: u64,
    data: &Bytes,
) -> Result<()> {
    let len = data.len() as u64;
    if len > max_part_size {
        return Err(StoreError::InvalidInput {
            path: path.to_string(),
            reason: format!("part of {len} bytes exceeds the maximum of {max_part_size}"),
        });
    }
    if offset + len > total_size {
        return Err(StoreError::InvalidInput {
            path: path.to_string(),
            reason: format!(
                "part at {offset}+{len} goes past the declared size of {total_size} bytes"
            ),
        });
    }
    Ok(())
}

/// The length of part `index` when `total_size` bytes are cut into parts of `part_size`;
/// `None` past the end.
pub(crate) fn part_len(total_size: u64, part_size: u64, index: u64) -> Option<u64> {
    let offset = index.checked_mul(part_size)?;
    (offset < total_size).then(|| part_size.min(total_size - offset))
}

/// Writes need a name: the root of a store is a directory.
pub(crate) fn reject_root(path: &ObjectPath) -> Result<()> {
    if path.is_root() {
        return Err(StoreError::InvalidInput {
            path: "/".into(),
            reason: "an object needs a name".into(),
        });
    }
    Ok(())
}
