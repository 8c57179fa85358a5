//! Real FUSE mounts (as root) over the `local` and `azure_blob` (Azurite) backends: content is
//! byte-exact through the kernel, listings are complete, reads at odd offsets and from many
//! readers at once are right, and writes are refused with EROFS.

mod common;

use common::data::{p, pattern};
use common::fs::{assert_reads_as, sorted_names};
use common::mounts::{blocking, is_mounted, test_config as config};

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use dataref::fs::filesystem::FsOptions;
use dataref::fs::mount::mount_into;
use dataref::store::local::LocalStore;
use dataref::store::{PutOptions, Store};
use futures::StreamExt;

async fn put_many(store: &dyn Store, files: Vec<(String, Vec<u8>)>) {
    futures::stream::iter(files)
        .for_each_concurrent(32, |(name, data)| async move {
            if data.len() > PART {
                return put_in_parts(store, &name, Bytes::from(data)).await;
            }
            store
                .put(&p(&name), Bytes::from(data), &PutOptions::default())
                .await
                .unwrap();
        })
        .await;
}

const PART: usize = 8 * 1024 * 1024;

/// Large objects go up as a multi-part upload, as dataref's own uploads do (one Put Blob of a
/// gigabyte is not how anything writes it).
async fn put_in_parts(store: &dyn Store, name: &str, data: Bytes) {
    use md5::Digest;
    let upload = store
        .start_upload(&p(name), data.len() as u64)
        .await
        .unwrap();
    futures::stream::iter(data.chunks(PART).enumerate())
        .for_each_concurrent(8, |(index, chunk)| {
            let part = data.slice_ref(chunk);
            let upload = &upload;
            async move {
                upload
                    .put_part(index as u64, (index * PART) as u64, part)
                    .await
                    .unwrap();
            }
        })
        .await;
    upload
        .complete(dataref::store::Checksums::md5_only(
            md5::Md5::digest(&data).into(),
        ))
        .await
        .unwrap();
}

/// The checks every backend must pass, on a store already holding `populate`'s data.
async fn check_mount(store: Arc<dyn Store>, big_size: usize, small_count: usize, wide: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    let mounted = mount_into(
        store,
        &p("data"),
        &mountpoint,
        FsOptions::new(dataref::model::MemoryBudget::new(256 * 1024 * 1024)),
        &config("m"),
    )
    .await
    .unwrap();
    let root = mountpoint.clone();

    // Nested folders and their listing.
    let top = blocking({
        let root = root.clone();
        move || sorted_names(&root)
    })
    .await;
    assert_eq!(top, vec!["big.bin", "nested", "small", "wide"]);

    // The large file, byte-exact, compared in 1 MiB chunks.
    blocking({
        let root = root.clone();
        move || {
            let mut file = std::fs::File::open(root.join("big.bin")).unwrap();
            assert_eq!(file.metadata().unwrap().len(), big_size as u64);
            let expected = pattern(big_size, 1);
            assert_reads_as(&mut file, &expected, "big.bin");

            // Random reads at odd offsets.
            for (at, len) in [
                (big_size as u64 - 3, 3usize),
                (1_234_567, 4097),
                (7, 1),
                (999_999, 65_537),
            ] {
                file.seek(SeekFrom::Start(at)).unwrap();
                let mut chunk = vec![0u8; len];
                file.read_exact(&mut chunk).unwrap();
                assert!(
                    chunk[..] == expected[at as usize..at as usize + len],
                    "at {at}"
                );
            }
        }
    })
    .await;

    // Many small files, read by 8 readers at once.
    let small: Vec<PathBuf> = blocking({
        let root = root.clone();
        move || {
            let mut names = sorted_names(&root.join("small"));
            names.sort();
            names
                .into_iter()
                .map(|n| root.join("small").join(n))
                .collect()
        }
    })
    .await;
    assert_eq!(small.len(), small_count);
    let mut readers = Vec::new();
    for chunk in small.chunks(small.len().div_ceil(8)) {
        let chunk = chunk.to_vec();
        readers.push(tokio::task::spawn_blocking(move || {
            for path in chunk {
                let index: u32 = path.file_name().unwrap().to_str().unwrap()[1..6]
                    .parse()
                    .unwrap();
                let data = std::fs::read(&path).unwrap();
                assert!(
                    data == pattern(4096 + index as usize, index),
                    "{}",
                    path.display()
                );
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }

    // A wide folder is listed completely, and nested data is where it belongs.
    let wide_names = blocking({
        let root = root.clone();
        move || sorted_names(&root.join("wide"))
    })
    .await;
    assert_eq!(wide_names.len(), wide);
    let nested = blocking({
        let root = root.clone();
        move || std::fs::read(root.join("nested/a/b/c.txt")).unwrap()
    })
    .await;
    assert_eq!(nested, b"deep");

    // Read-only: writes, creates, deletes and renames are refused with EROFS.
    blocking({
        let root = root.clone();
        move || {
            let erofs = |e: std::io::Error| e.raw_os_error() == Some(libc::EROFS);
            assert!(erofs(
                std::fs::write(root.join("new.txt"), b"x").unwrap_err()
            ));
            assert!(erofs(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(root.join("big.bin"))
                    .unwrap_err()
            ));
            assert!(erofs(
                std::fs::remove_file(root.join("nested/a/b/c.txt")).unwrap_err()
            ));
            assert!(erofs(std::fs::create_dir(root.join("d")).unwrap_err()));
            assert!(erofs(
                std::fs::rename(root.join("big.bin"), root.join("b2")).unwrap_err()
            ));
            let missing = std::fs::metadata(root.join("nope")).unwrap_err();
            assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));

            // No extended attributes, said once (ENOSYS) so that the kernel stops asking:
            // otherwise `ls -l` costs two more round trips per entry (security.selinux and
            // posix ACLs), every time.
            let path = std::ffi::CString::new(root.join("big.bin").as_os_str().as_encoded_bytes())
                .unwrap();
            for name in [c"security.selinux", c"user.anything"] {
                let mut value = [0u8; 64];
                // SAFETY: valid C strings and a buffer of the size given.
                let n = unsafe {
                    libc::getxattr(
                        path.as_ptr(),
                        name.as_ptr(),
                        value.as_mut_ptr().cast(),
                        value.len(),
                    )
                };
                assert_eq!(n, -1);
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EOPNOTSUPP),
                    "{name:?}"
                );
            }
        }
    })
    .await;

    blocking(move || mounted.mount.unmount().unwrap()).await;
    assert!(!is_mounted(&mountpoint), "still mounted after unmount");
}

fn dataset(big_size: usize, small_count: usize, wide: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("data/big.bin".to_owned(), pattern(big_size, 1)),
        ("data/nested/a/b/c.txt".to_owned(), b"deep".to_vec()),
        // Outside the mounted directory: never visible.
        ("data_v2/hidden.txt".to_owned(), b"no".to_vec()),
    ];
    for i in 0..small_count as u32 {
        files.push((
            format!("data/small/f{i:05}.bin"),
            pattern(4096 + i as usize, i),
        ));
    }
    for i in 0..wide {
        files.push((format!("data/wide/e{i:05}"), Vec::new()));
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mount_is_exact_complete_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()).unwrap());
    let (big, small, wide) = (1024 * 1024 * 1024, 2000, 10_000);
    put_many(store.as_ref(), dataset(big, small, wide)).await;
    check_mount(store, big, small, wide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_mount_is_exact_complete_and_read_only() {
    use common::azurite;
    use dataref::model::{AzureLocation, Credential, SecretRef};
    use dataref::store::azure::blob::BlobStore;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, azurite::KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let endpoint = azurite::shared().endpoint();
    let location = AzureLocation {
        account_name: azurite::ACCOUNT.into(),
        container: format!("mount-{}", std::process::id()),
        endpoint: Some(endpoint.clone()),
        credential: Credential::AccountKey(SecretRef::File(key)),
    };
    let store = BlobStore::new(
        &location,
        &endpoint,
        &dataref::store::Resources::new(64 * 1024 * 1024),
    )
    .unwrap();
    store.create_container().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let (big, small, wide) = (1024 * 1024 * 1024 + 11, 2000, 10_000);
    put_many(store.as_ref(), dataset(big, small, wide)).await;
    check_mount(store, big, small, wide).await;
}

/// `ls -l` of a folder: a directory read brings every entry's attributes (READDIRPLUS, no lookup
/// per entry); a second `ls -l` within the TTL is served by the kernel from its cached copy
/// (nothing reaches dataref); after the TTL the kernel reads the directory again and sees what
/// changed in storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_carry_attributes_and_stay_in_the_kernel_within_the_ttl() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    let entries = 1000;
    put_many(
        store.as_ref(),
        (0..entries)
            .map(|i| (format!("data/wide/e{i:04}"), vec![7u8; i % 97]))
            .collect(),
    )
    .await;
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let ttl = std::time::Duration::from_secs(4);
    let options = FsOptions {
        attribute_ttl: ttl,
        ..FsOptions::new(dataref::model::MemoryBudget::new(256 * 1024 * 1024))
    };
    let mounted = mount_into(
        store.clone(),
        &p("data"),
        &mountpoint,
        options,
        &config("plus"),
    )
    .await
    .unwrap();
    let wide = mountpoint.join("wide");
    // What `ls -l` does: read the directory, then stat every entry.
    let ls_l = move || {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&wide).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let size = std::fs::symlink_metadata(entry.path()).unwrap().len();
            let index: usize = name[1..].parse().unwrap_or(0);
            if name != "new" {
                assert_eq!(size, (index % 97) as u64, "{name}");
            }
            names.push(name);
        }
        names.sort();
        names
    };
    let counters = |m: &dataref::fs::mount::MountedPath| {
        let c = m.mount.core().counters();
        (
            c.lookups.load(Relaxed),
            c.directory_reads.load(Relaxed),
            c.listings.load(Relaxed),
        )
    };

    // The first `ls -l` fills the kernel's caches.
    let mut filled = std::time::Instant::now();
    let cold = blocking(ls_l.clone()).await;
    assert_eq!(cold.len(), entries);
    let (lookups, reads, listings) = counters(&mounted);
    // One lookup ("wide"), not one per entry; the 1,000 entries in a few dozen reads.
    assert!(
        lookups <= 2,
        "{lookups} lookups for an ls -l of {entries} entries"
    );
    assert!((2..100).contains(&reads), "{reads} directory reads");
    assert_eq!(listings, 2, "the root and wide/, each listed once");

    // A second `ls -l` right after must not reach dataref, provided it ended within the TTL of
    // the first one's start (everything the first one read was cached after that). A loaded machine
    // can make a pair slower than the TTL; then that pair proves nothing, the caches are left
    // to expire, and a fresh pair is timed. A pair takes well under a second, so five slow
    // pairs in a row mean a machine more than 4x too slow for the test, and it fails.
    let mut round = 0;
    let last_fill = loop {
        round += 1;
        if round > 1 {
            filled = std::time::Instant::now();
            blocking(ls_l.clone()).await;
        }
        let before = counters(&mounted);
        let warm = blocking(ls_l.clone()).await;
        let after = counters(&mounted);
        if filled.elapsed() < ttl {
            assert_eq!(warm, cold);
            assert_eq!(after, before, "a warm ls -l within the TTL reached dataref");
            break filled;
        }
        assert!(
            round < 5,
            "five ls -l pairs in a row took longer than the {ttl:?} TTL"
        );
        tokio::time::sleep(ttl).await;
    };

    // Past the TTL, a new object shows up: the kernel's copy was dropped and read again.
    let (_, reads, listings) = counters(&mounted);
    store
        .put(
            &p("data/wide/new"),
            Bytes::from_static(b"n"),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(
        ttl.saturating_sub(last_fill.elapsed()) + std::time::Duration::from_millis(300),
    )
    .await;
    let later = blocking(ls_l).await;
    assert_eq!(later.len(), entries + 1);
    assert!(later.contains(&"new".to_owned()));
    let (_, reads_after, listings_after) = counters(&mounted);
    assert!(reads_after > reads && listings_after > listings);

    blocking(move || mounted.mount.unmount().unwrap()).await;
}
