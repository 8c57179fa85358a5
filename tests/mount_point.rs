//! Root never follows a path the user controls when mounting or unmounting (issue 15): the mount
//! is made on a descriptor of the mount point, checked to be the job's user's, and unmounted
//! through that descriptor. A mount point swapped for a link to someone else's folder gets
//! nothing mounted on it; a mount point whose parent is swapped after mounting does not
//! redirect the unmount to another mount. Each case has a control that must succeed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use common::data::p;
use common::mounts::{blocking, is_mounted, mountinfo, test_config};
use common::tmpfs::Tmpfs;
use dataref::fs::filesystem::FsOptions;
use dataref::fs::fuse::MountConfig;
use dataref::fs::mount::{Direct, MountError, MountedPath, mount_reference};
use dataref::model::MemoryBudget;
use dataref::store::local::LocalStore;
use dataref::store::{PutOptions, Store};

const NOBODY: u32 = 65534;

async fn store_with_data(dir: &Path) -> Arc<dyn Store> {
    std::fs::create_dir_all(dir.join("store")).unwrap();
    let store = LocalStore::new(dir.join("store")).unwrap();
    for (name, body) in [("data/a.txt", "private"), ("data/b.txt", "more")] {
        store
            .put(&p(name), body.into(), &PutOptions::default())
            .await
            .unwrap();
    }
    Arc::new(store)
}

/// A mount for a job run as `nobody`.
fn for_nobody(job: &str) -> MountConfig {
    MountConfig {
        allow_other: true,
        owner: Some((NOBODY, NOBODY)),
        ..test_config(job)
    }
}

async fn mount_at(
    store: &Arc<dyn Store>,
    remote: &str,
    local: &Path,
    config: &MountConfig,
) -> Result<MountedPath, MountError> {
    mount_reference(
        store.clone(),
        &p(remote),
        local,
        false,
        FsOptions::new(MemoryBudget::new(64 << 20)),
        config,
        Direct::for_owner(config.owner),
    )
    .await
}

/// A folder only root may write, with a canary file in it.
fn roots_folder(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::write(path.join("canary"), "root's").unwrap();
}

fn nobodys_folder(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

fn ours_mounted(config: &MountConfig) -> bool {
    mountinfo().contains(&config.fsname)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_someone_elses_folder_gets_nothing_mounted_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_data(dir.path()).await;
    let root_only = dir.path().join("root-only");
    roots_folder(&root_only);
    let user = dir.path().join("user");
    nobodys_folder(&user);

    // The user's mount point is a link to root's folder: refused, nothing mounted there.
    let link = user.join("data");
    std::os::unix::fs::symlink(&root_only, &link).unwrap();
    let config = for_nobody("link");
    let refused = mount_at(&store, "data", &link, &config)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &refused,
            MountError::MountPointNotTheirs {
                owner: NOBODY,
                found: 0,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("owned by uid 0"), "{refused}");
    assert!(!is_mounted(&root_only) && !ours_mounted(&config));
    assert_eq!(
        std::fs::read_to_string(root_only.join("canary")).unwrap(),
        "root's"
    );

    // A single object's mount point linked to root's file: refused, the file unchanged.
    let file_link = user.join("a.txt");
    std::os::unix::fs::symlink(root_only.join("canary"), &file_link).unwrap();
    let refused = mount_at(&store, "data/a.txt", &file_link, &config)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(refused, MountError::Mountpoint { .. }),
        "{refused}"
    );
    assert!(!ours_mounted(&config));
    assert_eq!(
        std::fs::read_to_string(root_only.join("canary")).unwrap(),
        "root's"
    );

    // A missing mount point is not created in a folder that is not the user's.
    let refused = mount_at(&store, "data", &root_only.join("new"), &config)
        .await
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("not owned by uid"),
        "{refused}"
    );
    assert!(!root_only.join("new").exists() && !ours_mounted(&config));

    // Controls: the user's own folder mounts, and so does a missing one in their folder
    // (created for them); both read through the mount, and unmount cleanly.
    let own = user.join("own");
    nobodys_folder(&own);
    let missing = user.join("made/for/them");
    for mountpoint in [own, missing] {
        let mounted = mount_at(&store, "data", &mountpoint, &config)
            .await
            .unwrap();
        let at = mountpoint.clone();
        let read = blocking(move || std::fs::read_to_string(at.join("a.txt")).unwrap()).await;
        assert_eq!(read, "private");
        assert!(is_mounted(&mountpoint));
        mounted.unmount().unwrap();
        assert!(!is_mounted(&mountpoint) && !ours_mounted(&config));
        assert_eq!(std::fs::metadata(&mountpoint).unwrap().uid(), NOBODY);
    }
    // A single object on a placeholder made for them, removed at unmount.
    let placeholder = user.join("only.txt");
    let mounted = mount_at(&store, "data/a.txt", &placeholder, &config)
        .await
        .unwrap();
    let at = placeholder.clone();
    assert_eq!(
        blocking(move || std::fs::read_to_string(at).unwrap()).await,
        "private"
    );
    mounted.unmount().unwrap();
    assert!(!placeholder.exists() && !ours_mounted(&config));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_parent_does_not_redirect_the_unmount() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_data(dir.path()).await;
    // Another filesystem, at the place the swapped path will lead to.
    let other = Tmpfs::mount(&dir.path().join("elsewhere/data"), "1m");
    std::fs::write(other.path().join("marker"), "other").unwrap();

    let job = dir.path().join("job");
    let mountpoint = job.join("data");
    let config = test_config("swap");
    let mounted = mount_at(&store, "data", &mountpoint, &config)
        .await
        .unwrap();
    assert!(is_mounted(&mountpoint));

    // The user renames the mount point's parent and puts a link to the other mount in its
    // place: `job/data` now leads to the tmpfs.
    let moved = dir.path().join("job.moved");
    std::fs::rename(&job, &moved).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &job).unwrap();
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("marker")).unwrap(),
        "other"
    );
    assert!(
        is_mounted(&moved.join("data")),
        "the mount moved with its parent"
    );

    // The unmount takes exactly our mount, and leaves the other one.
    mounted.unmount().unwrap();
    assert!(!ours_mounted(&config), "{}", mountinfo());
    assert!(!is_mounted(&moved.join("data")));
    assert!(is_mounted(other.path()), "the other mount was unmounted");
    assert_eq!(
        std::fs::read_to_string(other.path().join("marker")).unwrap(),
        "other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_someone_else_removed_is_not_unmounted_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_data(dir.path()).await;
    // The mount point is itself the root of another mount (the tmpfs).
    let under = Tmpfs::mount(&dir.path().join("under"), "1m");
    std::fs::write(under.path().join("marker"), "under").unwrap();
    let config = test_config("gone");
    let mounted = mount_at(&store, "data", under.path(), &config)
        .await
        .unwrap();
    assert!(ours_mounted(&config));

    // An administrator unmounts ours (a plain unmount works: dataref does not pin it).
    nix::mount::umount2(under.path(), nix::mount::MntFlags::empty()).unwrap();
    assert!(!ours_mounted(&config));

    // Our unmount then finds it gone and leaves the tmpfs beneath alone.
    mounted.unmount().unwrap();
    assert!(is_mounted(under.path()), "the mount beneath was unmounted");
    assert_eq!(
        std::fs::read_to_string(under.path().join("marker")).unwrap(),
        "under"
    );
}

/// A folder the job's user owns in a kernel filesystem (a delegated cgroup, here one made and
/// given to them) is no mount point: nothing is mounted there. (Control: a folder of theirs on
/// an ordinary filesystem mounts, in the tests above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_theirs_in_a_kernel_filesystem_gets_nothing_mounted_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_data(dir.path()).await;
    let cgroup = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|root| Path::new(root).join(format!("dataref-mount-test-{}", std::process::id())))
    .find(|group| std::fs::create_dir(group).is_ok())
    .expect("a cgroup folder can be made (the suite runs as root)");
    std::os::unix::fs::chown(&cgroup, Some(NOBODY), Some(NOBODY)).unwrap();
    let config = for_nobody("kernelfs");
    let refused = mount_at(&store, "data", &cgroup, &config).await;
    let mounted = ours_mounted(&config);
    let _ = std::fs::remove_dir(&cgroup);
    let error = refused.err().expect("refused");
    assert!(error.to_string().contains("kernel filesystem"), "{error}");
    assert!(!mounted, "mounted in a kernel filesystem");
}
