//! The filesystem core without a kernel: namespace rules, inodes, the listing TTL, the
//! kernel-cache decisions and reads, over an in-memory store whose requests are counted.
//! Time is paused, so the TTL is aged with `tokio::time::advance`, not waited for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::model::MemoryBudget;
use crate::store::counting::CountingStore;
use crate::store::memory::MemoryStore;
use crate::store::{PutOptions, Store};

/// `FsOptions::new`'s TTL (checked by `the_default_attribute_ttl_is_sixty_seconds`).
const TTL: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);

fn p(name: &str) -> ObjectPath {
    ObjectPath::parse(name).unwrap()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

fn options() -> FsOptions {
    FsOptions::new(MemoryBudget::new(64 * 1024 * 1024))
}

/// A memory store (kept to change behind the core's back), the counting store over it, and
/// the core over that.
struct Fixture {
    memory: MemoryStore,
    store: Arc<CountingStore>,
    core: FsCore,
}

impl Fixture {
    async fn new(objects: &[(&str, &[u8])]) -> Self {
        Self::build(MemoryStore::new(), objects, ObjectPath::root(), options()).await
    }

    async fn build(
        memory: MemoryStore,
        objects: &[(&str, &[u8])],
        root: ObjectPath,
        options: FsOptions,
    ) -> Self {
        for (name, bytes) in objects {
            put(&memory, name, bytes).await;
        }
        let store = Arc::new(CountingStore::new(Arc::new(memory.clone())));
        let core = FsCore::new(store.clone(), root, options);
        Self {
            memory,
            store,
            core,
        }
    }

    /// Names and kinds of a directory's children, in listing order.
    async fn names(&self, ino: u64) -> Vec<(String, Kind)> {
        let listing = self.core.readdir(ino).await.unwrap();
        listing
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.kind))
            .collect()
    }

    /// The inode of a `/`-separated path below the root, looked up one name at a time.
    async fn resolve(&self, path: &str) -> Result<Attr, FsError> {
        let mut attr = self.core.getattr(ROOT_INO).await?;
        for name in path.split('/') {
            attr = self.core.lookup(attr.ino, name).await?;
        }
        Ok(attr)
    }

    async fn read_all(&self, path: &str) -> Vec<u8> {
        let attr = self.resolve(path).await.unwrap();
        let fh = self.core.open(attr.ino).await.unwrap();
        let bytes = self.core.read(fh, 0, attr.size as u32 + 1).await.unwrap();
        self.core.release(fh);
        bytes.to_vec()
    }
}

async fn put(memory: &MemoryStore, name: &str, bytes: &[u8]) {
    memory
        .put(
            &p(name),
            Bytes::copy_from_slice(bytes),
            &PutOptions::default(),
        )
        .await
        .unwrap();
}

fn file(name: &str) -> (String, Kind) {
    (name.to_owned(), Kind::File)
}

fn dir(name: &str) -> (String, Kind) {
    (name.to_owned(), Kind::Directory)
}

// ---- Names ----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_directory_wins_over_a_file_of_the_same_name() {
    let fx = Fixture::new(&[
        ("a/b", b"the file"),
        ("a/b/c", b"inside"),
        ("a/plain", b"no rival"),
    ])
    .await;
    let a = fx.resolve("a").await.unwrap();
    assert_eq!(a.kind, Kind::Directory);

    // One entry named `b`, the directory; the file `a/b` is not shown at all (not as a second
    // entry, not under another name). A file without a rival is shown as usual.
    assert_eq!(fx.names(a.ino).await, vec![dir("b"), file("plain")]);
    let b = fx.core.lookup(a.ino, "b").await.unwrap();
    assert_eq!(b.kind, Kind::Directory);
    assert_eq!(b.size, 0);
    assert!(matches!(
        fx.core.open(b.ino).await,
        Err(FsError::IsADirectory)
    ));
    assert_eq!(fx.names(b.ino).await, vec![file("c")]);
    assert_eq!(fx.read_all("a/b/c").await, b"inside");
}

#[tokio::test(start_paused = true)]
async fn a_directory_wins_over_a_file_of_the_same_name_in_the_root() {
    let fx = Fixture::new(&[("x", b"file"), ("x/y", b"deeper")]).await;
    assert_eq!(fx.names(ROOT_INO).await, vec![dir("x")]);
    assert_eq!(fx.resolve("x").await.unwrap().kind, Kind::Directory);
}

#[tokio::test(start_paused = true)]
async fn a_single_blob_view_shows_only_that_file() {
    let memory = MemoryStore::new();
    let objects: &[(&str, &[u8])] = &[
        ("d/one", b"the one blob"),
        ("d/two", b"a sibling"),
        ("d/sub/three", b"a sibling's child"),
        ("other/one", b"another folder"),
    ];
    let mut fx = Fixture::build(memory, objects, p("d"), options()).await;
    fx.core = FsCore::new(fx.store.clone(), p("d"), options()).single_file("one");

    assert_eq!(fx.names(ROOT_INO).await, vec![file("one")]);
    assert!(matches!(
        fx.core.lookup(ROOT_INO, "two").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        fx.core.lookup(ROOT_INO, "sub").await,
        Err(FsError::NotFound)
    ));
    let one = fx.core.lookup(ROOT_INO, "one").await.unwrap();
    assert_eq!((one.kind, one.size), (Kind::File, 12));
    assert_eq!(fx.read_all("one").await, b"the one blob");
}

#[tokio::test(start_paused = true)]
async fn an_object_root_is_that_file_alone() {
    let memory = MemoryStore::new();
    put(&memory, "d/one", b"the one blob").await;
    put(&memory, "d/two", b"a sibling").await;
    let meta = memory.head(&p("d/one")).await.unwrap();
    let core = FsCore::of_object(Arc::new(memory), meta.clone(), options());

    let root = core.getattr(ROOT_INO).await.unwrap();
    assert_eq!((root.kind, root.size), (Kind::File, 12));
    assert_eq!(
        Some(root.mtime),
        meta.last_modified,
        "the object's time, not the mount's"
    );
    assert!(matches!(
        core.readdir(ROOT_INO).await,
        Err(FsError::NotADirectory)
    ));
    let fh = core.open(ROOT_INO).await.unwrap();
    assert_eq!(&core.read(fh, 0, 64).await.unwrap()[..], b"the one blob");
}

#[tokio::test(start_paused = true)]
async fn a_single_blob_view_of_a_missing_blob_is_empty() {
    let memory = MemoryStore::new();
    let mut fx = Fixture::build(memory, &[("d/two", b"x")], p("d"), options()).await;
    fx.core = FsCore::new(fx.store.clone(), p("d"), options()).single_file("one");
    assert!(fx.names(ROOT_INO).await.is_empty());
    assert!(matches!(
        fx.core.lookup(ROOT_INO, "one").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_listing_collects_every_page_and_is_sorted_by_name() {
    let memory = MemoryStore::new().with_page_size(2);
    let objects: &[(&str, &[u8])] = &[
        ("e", b"5"),
        ("d/x", b"4"),
        ("c", b"3"),
        ("b/x", b"2"),
        ("a", b"1"),
    ];
    let fx = Fixture::build(memory, objects, ObjectPath::root(), options()).await;
    assert_eq!(
        fx.names(ROOT_INO).await,
        vec![file("a"), dir("b"), file("c"), dir("d"), file("e")]
    );
    assert_eq!(fx.store.lists(), 3, "five entries in pages of two");
    assert_eq!(fx.core.counters().listings.load(Ordering::Relaxed), 1);
}

// ---- Inodes ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_same_path_keeps_its_inode_across_lookups_and_listings() {
    let fx = Fixture::new(&[("a/f", b"1"), ("a/g", b"2"), ("h", b"3")]).await;
    let first = fx.resolve("a/f").await.unwrap().ino;
    assert_eq!(fx.resolve("a/f").await.unwrap().ino, first);

    // Listed again after the TTL: the same inode, in the listing and for a lookup.
    tokio::time::advance(TTL + MS).await;
    let a = fx.resolve("a").await.unwrap().ino;
    let listed = fx.core.readdir(a).await.unwrap();
    assert_eq!(fx.store.lists(), 4, "root and a, then both again");
    assert_eq!(listed.entries[0].name, "f");
    assert_eq!(listed.entries[0].ino, first);
    assert_eq!(fx.resolve("a/f").await.unwrap().ino, first);
    assert_eq!(fx.core.getattr(first).await.unwrap().ino, first);

    // Different paths, different inodes (and none is the root's).
    let mut all = vec![
        ROOT_INO,
        a,
        first,
        fx.resolve("a/g").await.unwrap().ino,
        fx.resolve("h").await.unwrap().ino,
    ];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_and_recreated_file_gets_its_old_inode_and_new_attributes() {
    let fx = Fixture::new(&[("f", b"old")]).await;
    let old = fx.resolve("f").await.unwrap();
    fx.memory.delete(&p("f")).await.unwrap();
    tokio::time::advance(TTL + MS).await;
    assert!(matches!(fx.resolve("f").await, Err(FsError::NotFound)));

    put(&fx.memory, "f", b"new and longer").await;
    tokio::time::advance(TTL + MS).await;
    let new = fx.resolve("f").await.unwrap();
    assert_eq!(new.ino, old.ino);
    assert_eq!(new.size, 14);
    assert_eq!(fx.read_all("f").await, b"new and longer");
}

#[tokio::test(start_paused = true)]
async fn a_file_that_becomes_a_directory_gets_a_new_inode() {
    let fx = Fixture::new(&[("b", b"a file")]).await;
    let as_file = fx.resolve("b").await.unwrap();
    assert_eq!(as_file.kind, Kind::File);

    put(&fx.memory, "b/c", b"now a directory").await;
    tokio::time::advance(TTL + MS).await;
    let as_dir = fx.resolve("b").await.unwrap();
    assert_eq!(as_dir.kind, Kind::Directory);
    assert_ne!(as_dir.ino, as_file.ino);
    // The file's inode still names the file (an open handle's kernel inode stays valid).
    assert_eq!(fx.core.getattr(as_file.ino).await.unwrap().kind, Kind::File);
}

// ---- The listing TTL ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn within_the_ttl_a_listing_is_served_from_memory() {
    let fx = Fixture::new(&[("old", b"1"), ("gone", b"2")]).await;
    assert_eq!(fx.names(ROOT_INO).await, vec![file("gone"), file("old")]);
    assert_eq!(fx.store.lists(), 1);

    // Changed behind the core's back, just inside the TTL: nothing reaches the store, and the
    // listing and lookups (hits and misses) still answer from the old listing.
    put(&fx.memory, "new", b"3").await;
    fx.memory.delete(&p("gone")).await.unwrap();
    tokio::time::advance(TTL - MS).await;
    assert_eq!(fx.names(ROOT_INO).await, vec![file("gone"), file("old")]);
    assert!(fx.core.lookup(ROOT_INO, "gone").await.is_ok());
    assert!(matches!(
        fx.core.lookup(ROOT_INO, "new").await,
        Err(FsError::NotFound)
    ));
    assert!(fx.core.read_listing(ROOT_INO, 0).await.is_ok());
    assert_eq!(fx.store.lists(), 1);
    assert_eq!(fx.core.counters().listings.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn after_the_ttl_new_objects_appear_and_deleted_ones_disappear() {
    let fx = Fixture::new(&[("old", b"1"), ("gone", b"2")]).await;
    let gone = fx.resolve("gone").await.unwrap().ino;
    put(&fx.memory, "new", b"3").await;
    fx.memory.delete(&p("gone")).await.unwrap();

    tokio::time::advance(TTL + MS).await;
    assert_eq!(fx.names(ROOT_INO).await, vec![file("new"), file("old")]);
    assert_eq!(fx.store.lists(), 2);
    assert!(matches!(
        fx.core.lookup(ROOT_INO, "gone").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(fx.read_all("new").await, b"3");
    // The deleted file's inode is kept (never reused), so the kernel's stale copy still stats.
    assert!(fx.core.getattr(gone).await.is_ok());
    assert_eq!(
        fx.store.lists(),
        2,
        "the fresh listing answered the lookups"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lookup_after_the_ttl_lists_the_directory_again() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    fx.resolve("f").await.unwrap();
    fx.resolve("f").await.unwrap();
    assert_eq!(fx.store.lists(), 1);
    tokio::time::advance(TTL + MS).await;
    fx.resolve("f").await.unwrap();
    assert_eq!(fx.store.lists(), 2);
    assert_eq!(fx.core.counters().lookups.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn each_directory_has_its_own_ttl() {
    let fx = Fixture::new(&[("a/f", b"1"), ("b/f", b"2")]).await;
    let a = fx.resolve("a").await.unwrap().ino;
    fx.core.readdir(a).await.unwrap();
    tokio::time::advance(TTL / 2).await;
    let b = fx.resolve("b").await.unwrap().ino;
    fx.core.readdir(b).await.unwrap();
    assert_eq!(fx.store.lists(), 3);

    // Root and `a` have expired, `b` has not.
    tokio::time::advance(TTL / 2 + MS).await;
    fx.core.readdir(b).await.unwrap();
    assert_eq!(fx.store.lists(), 3);
    fx.core.readdir(a).await.unwrap();
    assert_eq!(fx.store.lists(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_lists_every_time_and_never_keeps_the_kernel_copy() {
    let options = FsOptions {
        attribute_ttl: Duration::ZERO,
        ..options()
    };
    let fx = Fixture::build(
        MemoryStore::new(),
        &[("f", b"1")],
        ObjectPath::root(),
        options,
    )
    .await;
    assert_eq!(fx.core.attribute_ttl(), Duration::ZERO);
    fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    fx.core.lookup(ROOT_INO, "f").await.unwrap();
    fx.core.readdir(ROOT_INO).await.unwrap();
    assert_eq!(fx.store.lists(), 3);
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
}

#[tokio::test(start_paused = true)]
async fn the_default_attribute_ttl_is_sixty_seconds() {
    let fx = Fixture::new(&[]).await;
    assert_eq!(fx.core.attribute_ttl(), TTL);
    let options = FsOptions {
        attribute_ttl: Duration::from_secs(5),
        ..options()
    };
    let fx = Fixture::build(MemoryStore::new(), &[], ObjectPath::root(), options).await;
    assert_eq!(fx.core.attribute_ttl(), Duration::from_secs(5));
}

// ---- The kernel's directory cache (opendir's keep) ------------------------------------------

#[tokio::test(start_paused = true)]
async fn opendir_keeps_the_kernel_copy_only_after_a_read_from_the_start_within_the_ttl() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    // Never read: nothing for the kernel to keep.
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
    // Listed for a lookup, not read by the kernel: still nothing.
    fx.core.readdir(ROOT_INO).await.unwrap();
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
    // A read from the middle is not what the kernel caches.
    fx.core.read_listing(ROOT_INO, 1).await.unwrap();
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
    // Read from the start: keep, for as long as the listing is fresh.
    fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    assert!(fx.core.opendir(ROOT_INO).unwrap());
    tokio::time::advance(TTL - MS).await;
    assert!(fx.core.opendir(ROOT_INO).unwrap());
    assert_eq!(fx.store.lists(), 1);
    assert_eq!(
        fx.core.counters().directory_reads.load(Ordering::Relaxed),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn opendir_drops_the_kernel_copy_once_the_listing_expires() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    assert!(fx.core.opendir(ROOT_INO).unwrap());
    // Expired, though nothing changed in the store: the kernel must read again.
    tokio::time::advance(TTL + MS).await;
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
    // That read lists afresh and may be kept again.
    fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    assert_eq!(fx.store.lists(), 2);
    assert!(fx.core.opendir(ROOT_INO).unwrap());
}

#[tokio::test(start_paused = true)]
async fn opendir_drops_the_kernel_copy_when_the_listing_was_refreshed_in_between() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    put(&fx.memory, "g", b"2").await;
    tokio::time::advance(TTL + MS).await;
    // A lookup refreshes the listing (now fresh, and with `g`) without the kernel reading it:
    // what the kernel holds is not the current listing.
    fx.core.lookup(ROOT_INO, "g").await.unwrap();
    assert_eq!(fx.store.lists(), 2);
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
    // The kernel's next read is served the current listing, which it may then keep.
    let listing = fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    assert_eq!(listing.entries.len(), 2);
    assert_eq!(fx.store.lists(), 2);
    assert!(fx.core.opendir(ROOT_INO).unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_listing_within_the_ttl_is_the_same_shared_listing() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    let first = fx.core.readdir(ROOT_INO).await.unwrap();
    let again = fx.core.read_listing(ROOT_INO, 0).await.unwrap();
    assert!(first.same_as(&again));
    tokio::time::advance(TTL + MS).await;
    let later = fx.core.readdir(ROOT_INO).await.unwrap();
    assert!(
        !first.same_as(&later),
        "a fresh listing, though equal in content"
    );
    assert_eq!(first.entries[0].ino, later.entries[0].ino);
}

#[tokio::test(start_paused = true)]
async fn each_directory_keeps_its_own_kernel_copy() {
    let fx = Fixture::new(&[("a/f", b"1"), ("b/f", b"2")]).await;
    let a = fx.resolve("a").await.unwrap().ino;
    let b = fx.resolve("b").await.unwrap().ino;
    fx.core.read_listing(a, 0).await.unwrap();
    assert!(fx.core.opendir(a).unwrap());
    assert!(!fx.core.opendir(b).unwrap());
    assert!(!fx.core.opendir(ROOT_INO).unwrap());
}

// ---- Errors ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_lookup_of_a_missing_name_or_in_a_missing_directory_is_not_found() {
    let fx = Fixture::new(&[("a/f", b"1")]).await;
    assert!(matches!(
        fx.core.lookup(ROOT_INO, "nope").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(fx.resolve("nope/f").await, Err(FsError::NotFound)));
    assert!(matches!(fx.resolve("a/nope").await, Err(FsError::NotFound)));
    assert!(matches!(
        fx.core.lookup(9999, "f").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        fx.core.getattr(9999).await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        fx.core.readdir(9999).await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(fx.core.opendir(9999), Err(FsError::NotFound)));
    assert!(matches!(fx.core.open(9999).await, Err(FsError::NotFound)));
}

#[tokio::test(start_paused = true)]
async fn a_lookup_under_a_file_is_not_a_directory() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    let f = fx.resolve("f").await.unwrap().ino;
    assert!(matches!(
        fx.core.lookup(f, "x").await,
        Err(FsError::NotADirectory)
    ));
}

#[tokio::test(start_paused = true)]
async fn opening_a_directory_is_is_a_directory() {
    let fx = Fixture::new(&[("a/f", b"1")]).await;
    let a = fx.resolve("a").await.unwrap().ino;
    assert!(matches!(fx.core.open(a).await, Err(FsError::IsADirectory)));
    assert!(matches!(
        fx.core.open(ROOT_INO).await,
        Err(FsError::IsADirectory)
    ));
    assert_eq!(fx.core.open_handles(), 0);
}

#[tokio::test(start_paused = true)]
async fn reading_a_file_as_a_directory_is_not_a_directory() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    let f = fx.resolve("f").await.unwrap().ino;
    assert!(matches!(
        fx.core.readdir(f).await,
        Err(FsError::NotADirectory)
    ));
    assert!(matches!(
        fx.core.read_listing(f, 0).await,
        Err(FsError::NotADirectory)
    ));
    assert!(matches!(fx.core.opendir(f), Err(FsError::NotADirectory)));
    assert_eq!(fx.store.lists(), 1, "only the root was listed");
}

#[tokio::test(start_paused = true)]
async fn a_read_through_an_unknown_handle_is_a_bad_handle() {
    let fx = Fixture::new(&[("f", b"1")]).await;
    assert!(matches!(
        fx.core.read(12345, 0, 10).await,
        Err(FsError::BadHandle)
    ));
    fx.core.release(12345); // releasing an unknown handle is harmless
    assert_eq!(fx.core.open_handles(), 0);
}

// ---- Attributes and reads -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn attributes_are_the_objects_size_and_modification_time() {
    let fx = Fixture::new(&[("a/f", &data(1000, 3))]).await;
    let meta = fx.memory.head(&p("a/f")).await.unwrap();
    let f = fx.resolve("a/f").await.unwrap();
    assert_eq!((f.kind, f.size), (Kind::File, 1000));
    assert_eq!(Some(f.mtime), meta.last_modified);
    let a = fx.resolve("a").await.unwrap();
    let listed = &fx.core.readdir(a.ino).await.unwrap().entries[0];
    assert_eq!(listed.attr(), f);
    let root = fx.core.getattr(ROOT_INO).await.unwrap();
    assert_eq!(
        (root.ino, root.kind, root.size),
        (ROOT_INO, Kind::Directory, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn reads_at_offsets_return_the_exact_bytes() {
    let len = 300 * 1024 + 17;
    let bytes = data(len, 5);
    let fx = Fixture::new(&[("d/f", &bytes)]).await;
    let f = fx.resolve("d/f").await.unwrap();
    assert_eq!(f.size, len as u64);
    let fh = fx.core.open(f.ino).await.unwrap();
    for (offset, size) in [
        (0, 1),
        (0, 4096),
        (1000, 3000),
        (65_535, 2),
        (200_000, 70_000),
        (len - 10, 10),
        (len - 10, 4096), // short: only the 10 bytes there are
        (0, len),
    ] {
        let got = fx.core.read(fh, offset as u64, size as u32).await.unwrap();
        let end = (offset + size).min(len);
        assert!(
            got[..] == bytes[offset..end],
            "read of {size} at {offset}: {} bytes",
            got.len()
        );
    }
    // Backwards after forwards, through the same handle.
    let got = fx.core.read(fh, 10, 20).await.unwrap();
    assert_eq!(got[..], bytes[10..30]);
}

#[tokio::test(start_paused = true)]
async fn reads_at_or_past_the_end_are_empty() {
    let fx = Fixture::new(&[("f", b"0123456789"), ("empty", b"")]).await;
    let fh = fx
        .core
        .open(fx.resolve("f").await.unwrap().ino)
        .await
        .unwrap();
    assert!(fx.core.read(fh, 10, 100).await.unwrap().is_empty());
    assert!(fx.core.read(fh, 11, 100).await.unwrap().is_empty());
    assert!(fx.core.read(fh, 1 << 40, 100).await.unwrap().is_empty());
    assert_eq!(&fx.core.read(fh, 9, 100).await.unwrap()[..], b"9");

    let empty = fx.resolve("empty").await.unwrap();
    assert_eq!(empty.size, 0);
    let fh = fx.core.open(empty.ino).await.unwrap();
    assert!(fx.core.read(fh, 0, 100).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn release_frees_the_handle_and_only_that_one() {
    let fx = Fixture::new(&[("f", b"hello")]).await;
    let f = fx.resolve("f").await.unwrap().ino;
    let first = fx.core.open(f).await.unwrap();
    let second = fx.core.open(f).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(fx.core.open_handles(), 2);

    fx.core.release(first);
    assert_eq!(fx.core.open_handles(), 1);
    assert!(matches!(
        fx.core.read(first, 0, 5).await,
        Err(FsError::BadHandle)
    ));
    assert_eq!(&fx.core.read(second, 0, 5).await.unwrap()[..], b"hello");
    fx.core.release(second);
    assert_eq!(fx.core.open_handles(), 0);
    // A new open never gets a released handle back.
    let third = fx.core.open(f).await.unwrap();
    assert!(third != first && third != second);
}

#[tokio::test(start_paused = true)]
async fn reads_reach_the_store_and_opens_do_not_list() {
    let fx = Fixture::new(&[("f", &data(5000, 1))]).await;
    let f = fx.resolve("f").await.unwrap().ino;
    let lists = fx.store.lists();
    let fh = fx.core.open(f).await.unwrap();
    assert_eq!(fx.store.gets(), 0, "opening reads nothing");
    let got = fx.core.read(fh, 0, 5000).await.unwrap();
    assert_eq!(got.len(), 5000);
    assert!(fx.store.gets() >= 1);
    assert_eq!(fx.store.lists(), lists);
}
