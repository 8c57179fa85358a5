//! The whole-object CRC64 end to end, for any store: recorded by uploads, checked by
//! downloads.

use std::sync::Arc;

use dataref::store::checksum::crc64;
use dataref::store::{Store, list_all};
use dataref::transfer::{self, UploadSource};

use super::data::{p, pattern};
use super::engines::small_parts as engine;

/// Five 64 KiB parts and a bit: the multi-part paths of `engines::small_parts`.
pub const LARGE: usize = 300 * 1024;

/// Uploads a large and a small file through the engine under `run/`, checks that each was
/// stored with the CRC64 of its bytes (head, and listings when `listings_carry_crc64`), and
/// downloads them verified by CRC64. Returns the large file's bytes.
pub async fn crc64_round_trip(store: Arc<dyn Store>, listings_carry_crc64: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("out");
    std::fs::create_dir(&source).unwrap();
    let large = pattern(LARGE, 7);
    std::fs::write(source.join("large.bin"), &large).unwrap();
    std::fs::write(source.join("small.txt"), b"123456789").unwrap();
    let report = transfer::upload(
        &engine(),
        store.clone(),
        &UploadSource::Directory(source),
        &p("run"),
        false,
        &[],
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let head = store.head(&p("run/large.bin")).await.unwrap();
    assert_eq!(head.crc64, Some(crc64(&large)), "{}", store.describe());
    let small = store.head(&p("run/small.txt")).await.unwrap();
    assert_eq!(
        small.crc64,
        Some(0xae8b_1486_0a79_9888),
        "CRC-64/NVME of 123456789"
    );
    let listed = list_all(store.as_ref(), &p("run"), false).await.unwrap();
    assert!(
        listed
            .objects
            .iter()
            .all(|o| o.crc64.is_some() == listings_carry_crc64),
        "listings carry the CRC64: {listings_carry_crc64}: {:?}",
        listed.objects
    );

    let target = dir.path().join("back");
    let report = transfer::download(&engine(), store.clone(), &p("run"), &target, false)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.verified.crc64, 2, "{:?}", report.verified);
    assert_eq!(std::fs::read(target.join("large.bin")).unwrap(), large);
    assert!(
        report.summary().contains("2 by CRC64"),
        "{}",
        report.summary()
    );
    large
}
