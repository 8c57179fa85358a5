//! The disk cache under the file reader, over an in-memory store that counts its reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::fs::filesystem::{FsCore, FsOptions, ROOT_INO};
use crate::fs::reader::FileReader;
use crate::model::MemoryBudget;
use crate::store::counting::CountingStore;
use crate::store::memory::MemoryStore;
use crate::store::{PutOptions, Store};

const BLOCK: u64 = 64 * 1024;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

fn options(dir: &Path) -> CacheOptions {
    CacheOptions {
        dir: dir.join("cache"),
        max_bytes: None,
        reserved_free_bytes: 0,
        block_size: BLOCK,
    }
}

/// A store holding `f` (`len` bytes), counted.
async fn store_with(len: usize) -> (Arc<CountingStore>, Vec<u8>) {
    let memory = MemoryStore::new();
    let bytes = data(len, 1);
    memory
        .put(&p("f"), bytes.clone().into(), &PutOptions::default())
        .await
        .unwrap();
    (Arc::new(CountingStore::new(Arc::new(memory))), bytes)
}

fn p(name: &str) -> ObjectPath {
    ObjectPath::parse(name).unwrap()
}

fn id(seed: u8) -> ObjectId {
    ObjectId::new(&p("f"), 1, None, Some([seed; 16]), None)
}

fn reader(store: &Arc<CountingStore>, len: usize, cache: &Arc<DiskCache>) -> FileReader {
    FileReader::new(
        store.clone(),
        p("f"),
        len as u64,
        MemoryBudget::new(64 * 1024 * 1024),
        crate::fs::buffers::BufferPool::new(MemoryBudget::new(64 * 1024 * 1024), 0),
    )
    .with_cache(cache.clone(), id(1))
}

/// Reads the whole file in 128 KiB requests, as the kernel would.
async fn read_all(reader: &FileReader, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = reader.read(out.len() as u64, 128 * 1024).await.unwrap();
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

/// Bytes the cache's data file really holds on disk (its holes excluded).
fn allocated(cache: &DiskCache) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(cache.data_path()).unwrap().blocks() * 512
}

/// Only the lock file and the one data file: no file per block.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn second_read_is_served_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(options(dir.path()), MemoryBudget::new(256 * 1024 * 1024)).unwrap();
    let len = 20 * BLOCK as usize + 123;
    let (store, bytes) = store_with(len).await;

    let cold = read_all(&reader(&store, len, &cache), len).await;
    assert!(cold == bytes);
    // Sequential windows end on block boundaries: no byte is fetched twice.
    assert_eq!(store.bytes(), len as u64);
    cache.wait_idle().await;
    let gets = store.gets();
    assert_eq!(cache.stats().blocks, 21);
    assert!(allocated(&cache) >= len as u64, "the blocks are on disk");
    assert_eq!(files_in(cache.dir()), 2);

    let warm = reader(&store, len, &cache);
    assert!(read_all(&warm, len).await == bytes);
    // Random reads too, across block boundaries and at the short last block.
    for (offset, size) in [
        (BLOCK - 3, 10u64),
        (7, 1),
        (len as u64 - 5, 100),
        (3 * BLOCK + 1, 2 * BLOCK),
    ] {
        let got = warm.read(offset, size).await.unwrap();
        let end = ((offset + size) as usize).min(len);
        assert!(got[..] == bytes[offset as usize..end], "{offset}+{size}");
    }
    assert_eq!(store.gets(), gets, "the second pass went to the store");
    assert!(cache.stats().hits >= 21);
}

#[tokio::test]
async fn cap_evicts_the_least_recently_used_block() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(
        CacheOptions {
            max_bytes: Some(4 * BLOCK),
            ..options(dir.path())
        },
        MemoryBudget::new(256 * 1024 * 1024),
    )
    .unwrap();
    let block = Bytes::from(data(BLOCK as usize, 2));
    for i in 0..4 {
        cache.insert(id(1), i, block.clone());
        cache.wait_idle().await;
    }
    assert_eq!(cache.present(id(1), 0..4), vec![true; 4]);
    // Block 0 is used again, so block 1 is now the least recently used.
    assert!(cache.read(id(1), 0..1, BLOCK).await.unwrap() == block);
    cache.insert(id(1), 4, block.clone());
    cache.wait_idle().await;
    assert_eq!(
        cache.present(id(1), 0..5),
        vec![true, false, true, true, true]
    );
    let stats = cache.stats();
    assert_eq!((stats.bytes, stats.evicted), (4 * BLOCK, 1));
    // The evicted block's space went back to the disk (a punched hole), its slot reused.
    assert_eq!(allocated(&cache), 4 * BLOCK);

    // A block larger than the cap is never cached (and evicts nothing).
    let small = DiskCache::open(
        CacheOptions {
            max_bytes: Some(BLOCK / 2),
            ..options(&dir.path().join("small"))
        },
        MemoryBudget::new(256 * 1024 * 1024),
    )
    .unwrap();
    small.insert(id(1), 0, block);
    small.wait_idle().await;
    assert_eq!(small.stats().blocks, 0);
}

#[tokio::test]
async fn free_space_floor_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    // No disk has this much free: nothing may be cached, reads must still be right.
    let cache = DiskCache::open(
        CacheOptions {
            reserved_free_bytes: u64::MAX / 2,
            ..options(dir.path())
        },
        MemoryBudget::new(256 * 1024 * 1024),
    )
    .unwrap();
    let len = 8 * BLOCK as usize;
    let (store, bytes) = store_with(len).await;
    assert!(read_all(&reader(&store, len, &cache), len).await == bytes);
    cache.wait_idle().await;
    let gets = store.gets();
    assert!(read_all(&reader(&store, len, &cache), len).await == bytes);
    assert!(
        store.gets() > gets,
        "served from a cache that should be empty"
    );
    let stats = cache.stats();
    assert_eq!((stats.inserted, stats.blocks), (0, 0));
    assert!(stats.skipped >= 8);
    assert_eq!(allocated(&cache), 0);
}

#[tokio::test]
async fn a_changed_object_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(options(dir.path()), MemoryBudget::new(256 * 1024 * 1024)).unwrap();
    let memory = MemoryStore::new();
    let len = 3 * BLOCK as usize;
    let put = |seed: u8| {
        let memory = memory.clone();
        async move {
            let options = PutOptions {
                checksums: crate::store::Checksums::md5_only([seed; 16]),
            };
            memory
                .put(&p("d/f"), data(len, seed).into(), &options)
                .await
                .unwrap();
        }
    };
    put(1).await;
    let store = Arc::new(CountingStore::new(Arc::new(memory.clone())));
    let options = FsOptions {
        attribute_ttl: Duration::ZERO,
        ..FsOptions::new(crate::model::MemoryBudget::new(256 * 1024 * 1024))
    };
    let core = FsCore::new(store.clone(), p("d"), options).with_cache(cache.clone());
    let fh = open_f(&core).await;
    assert!(core.read(fh, 0, len as u32).await.unwrap()[..] == data(len, 1)[..]);
    cache.wait_idle().await;
    let before = store.gets();

    // Same name, same size, new content: the old blocks must not be served.
    put(2).await;
    let fh = open_f(&core).await;
    assert!(core.read(fh, 0, len as u32).await.unwrap()[..] == data(len, 2)[..]);
    assert!(store.gets() > before);
    assert_ne!(
        ObjectId::new(&p("f"), 1, Some(SystemTime::UNIX_EPOCH), None, None),
        ObjectId::new(&p("f"), 1, None, None, None)
    );
    assert_ne!(
        ObjectId::new(&p("f"), 1, None, None, Some("\"1\"")),
        ObjectId::new(&p("f"), 1, None, None, Some("\"2\"")),
        "another ETag is another version"
    );
}

async fn open_f(core: &FsCore) -> u64 {
    let ino = core.lookup(ROOT_INO, "f").await.unwrap().ino;
    core.open(ino).await.unwrap()
}

#[tokio::test]
async fn a_corrupt_or_missing_block_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(options(dir.path()), MemoryBudget::new(256 * 1024 * 1024)).unwrap();
    let len = 4 * BLOCK as usize;
    let (store, bytes) = store_with(len).await;
    assert!(read_all(&reader(&store, len, &cache), len).await == bytes);
    cache.wait_idle().await;

    // One block's bytes changed in place; another's zeroed (a hole punched by someone else).
    {
        use nix::fcntl::{FallocateFlags, fallocate};
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(cache.data_path())
            .unwrap();
        let first = cache.slot_offset(cache.slot_of(id(1), 0).unwrap());
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, first + 100).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], first + 100).unwrap();
        let second = cache.slot_offset(cache.slot_of(id(1), 1).unwrap());
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(&file, punch, second as i64, BLOCK as i64).unwrap();
    }

    let gets = store.gets();
    assert!(read_all(&reader(&store, len, &cache), len).await == bytes);
    assert!(store.gets() > gets);
    assert_eq!(cache.stats().corrupt, 2);
    // Re-fetched blocks are cached again.
    cache.wait_idle().await;
    assert_eq!(cache.stats().blocks, 4);
}

#[tokio::test]
async fn the_directory_is_ours_alone_and_removed_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());

    // Leftovers of a dataref that died (lock file present, not locked) are wiped.
    std::fs::create_dir_all(&options.dir).unwrap();
    std::fs::write(options.dir.join(LOCK_FILE), b"").unwrap();
    std::fs::write(options.dir.join("stale.0"), b"old").unwrap();
    let cache = DiskCache::open(options.clone(), MemoryBudget::new(256 * 1024 * 1024)).unwrap();
    assert!(!options.dir.join("stale.0").exists());

    // A live cache cannot be shared.
    assert!(matches!(
        DiskCache::open(options.clone(), MemoryBudget::new(256 * 1024 * 1024)),
        Err(CacheError::InUse { .. })
    ));

    // Closing deletes everything.
    cache.insert(id(1), 0, Bytes::from(data(10, 1)));
    cache.close();
    assert!(!options.dir.exists());
    // ... and stops caching.
    cache.insert(id(1), 1, Bytes::from(data(10, 1)));
    cache.wait_idle().await;
    assert!(!options.dir.exists());

    // A directory with someone else's files is never used (nor deleted).
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.tex"), b"precious").unwrap();
    assert!(matches!(
        DiskCache::open(
            CacheOptions {
                dir: foreign.clone(),
                ..options
            },
            MemoryBudget::new(256 * 1024 * 1024)
        ),
        Err(CacheError::NotOurs { .. })
    ));
    assert!(foreign.join("thesis.tex").exists());
}

#[test]
fn settings_choose_the_directory_and_zero_turns_the_cache_off() {
    use crate::model::MountSettings;
    let job = Path::new("/job/cache");
    let default = CacheOptions::from_settings(&MountSettings::default(), job, "train").unwrap();
    assert_eq!(default.dir, Path::new("/job/cache/train"));
    assert_eq!(default.max_bytes, None);
    let settings = MountSettings {
        cache_dir: Some("/nvme".into()),
        cache_size_bytes: Some(5 << 30),
        reserved_free_disk_bytes: 7,
        ..MountSettings::default()
    };
    let chosen = CacheOptions::from_settings(&settings, job, "train").unwrap();
    assert_eq!(chosen.dir, Path::new("/nvme/train"));
    assert_eq!(
        (chosen.max_bytes, chosen.reserved_free_bytes),
        (Some(5 << 30), 7)
    );
    let off = MountSettings {
        cache_size_bytes: Some(0),
        ..MountSettings::default()
    };
    assert!(CacheOptions::from_settings(&off, job, "train").is_none());
}
