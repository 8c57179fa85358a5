//! Test data: deterministic byte patterns and object paths.

use dataref::model::ObjectPath;
use md5::{Digest, Md5};

/// `len` bytes of stream `seed` starting at byte `offset`: `pattern_at(o, n, s)` equals
/// `pattern(o + n, s)[o..]`, so a large object can be generated part by part. The bytes look
/// random (no short period, so a block written at the wrong offset is caught) and different
/// seeds give unrelated streams.
pub fn pattern_at(offset: u64, len: usize, seed: u32) -> Vec<u8> {
    let salt = u64::from(seed).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (offset..offset + len as u64)
        .map(|i| ((i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 37) as u8)
        .collect()
}

/// `len` bytes of stream `seed` (see [`pattern_at`]).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    pattern_at(0, len, seed)
}

/// An object path that must parse.
pub fn p(name: &str) -> ObjectPath {
    ObjectPath::parse(name).unwrap()
}

/// The MD5 of `data`, as a store's `Content-MD5` holds it.
pub fn md5_of(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// A name (container, share) no other test of this run uses: `<prefix>-<pid>-<n>`, 3-63
/// lowercase characters for a short prefix.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// Writes `data` to `name` in one request, with its Content-MD5 (as dataref's uploads record
/// it).
pub async fn put_with_md5(store: &dyn dataref::store::Store, name: &str, data: &[u8]) {
    let options = dataref::store::PutOptions {
        checksums: dataref::store::Checksums::md5_only(md5_of(data)),
    };
    store
        .put(&p(name), bytes::Bytes::copy_from_slice(data), &options)
        .await
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
}
