//! `dataref upload` and `dataref download` against a registered local datastore.

mod common;

use std::path::Path;

use common::cli::run;

fn register(config: &Path, name: &str, root: &Path) {
    run(
        config,
        &[
            "datastore",
            "register",
            "local",
            "--name",
            name,
            "--root",
            root.to_str().unwrap(),
        ],
    )
    .expect_code(0);
}

#[test]
fn upload_directory_files_and_download_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    register(&config, "ws", &store);
    run(&config, &["datastore", "set-default", "ws"]).expect_code(0);

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    std::fs::write(src.join("nested/b.txt"), "b").unwrap();

    // One directory: its contents go under the target path.
    let out = run(
        &config,
        &[
            "upload",
            "--target-path",
            "data/v1",
            "--no-progress",
            src.to_str().unwrap(),
        ],
    );
    out.expect_code(0);
    assert!(
        out.stderr.contains("2 files"),
        "summary line: {}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(store.join("data/v1/nested/b.txt")).unwrap(),
        "b"
    );

    // Files: each lands at <target>/<name>; no --target-path = the root.
    let a = src.join("a.txt");
    let b = src.join("nested/b.txt");
    run(
        &config,
        &[
            "upload",
            "--datastore",
            "ws",
            "--no-progress",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    assert!(store.join("a.txt").is_file() && store.join("b.txt").is_file());

    // Existing objects are skipped without --overwrite, replaced with it.
    std::fs::write(&a, "changed").unwrap();
    let out = run(&config, &["upload", "--no-progress", a.to_str().unwrap()]);
    out.expect_code(0);
    assert!(out.stderr.contains("skipped"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(store.join("a.txt")).unwrap(), "a");
    run(
        &config,
        &[
            "upload",
            "--overwrite",
            "--no-progress",
            a.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    assert_eq!(
        std::fs::read_to_string(store.join("a.txt")).unwrap(),
        "changed"
    );

    // Mixing a directory and files is a usage error.
    let out = run(
        &config,
        &["upload", src.to_str().unwrap(), a.to_str().unwrap()],
    );
    out.expect_code(64);

    // Download keeps the full name under the target: data/v1/nested/b.txt.
    let target = dir.path().join("down");
    run(
        &config,
        &[
            "download",
            "--prefix",
            "data/v1",
            "--target-path",
            target.to_str().unwrap(),
            "--no-progress",
        ],
    )
    .expect_code(0);
    assert_eq!(
        std::fs::read_to_string(target.join("data/v1/nested/b.txt")).unwrap(),
        "b"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("data/v1/a.txt")).unwrap(),
        "a"
    );

    // Everything when no prefix is given.
    let all = dir.path().join("all");
    run(
        &config,
        &[
            "download",
            "--target-path",
            all.to_str().unwrap(),
            "--no-progress",
        ],
    )
    .expect_code(0);
    assert!(all.join("a.txt").is_file() && all.join("data/v1/nested/b.txt").is_file());
}

#[test]
fn download_of_nothing_exits_66_and_missing_source_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("a")).unwrap();
    std::fs::write(store.join("a/b_v2.csv"), "x").unwrap();
    register(&config, "ws", &store);
    let target = dir.path().join("down");
    // `a/b` is directory-aware: it never matches a/b_v2.csv.
    let out = run(
        &config,
        &[
            "download",
            "--datastore",
            "ws",
            "--prefix",
            "a/b",
            "--target-path",
            target.to_str().unwrap(),
        ],
    );
    out.expect_code(66);
    assert!(!target.exists());

    let out = run(
        &config,
        &["upload", "--datastore", "ws", "/nonexistent/file"],
    );
    out.expect_code(66);
    // No datastore and no default.
    let out = run(&config, &["upload", "/etc/hostname"]);
    out.expect_code(64);
}

#[test]
fn plain_progress_lines_when_not_a_terminal() {
    // The summary line is printed even without a terminal; --no-progress keeps only it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    register(&config, "ws", &store);
    let file = dir.path().join("f.bin");
    std::fs::write(&file, vec![1u8; 1000]).unwrap();
    let out = run(
        &config,
        &["upload", "--datastore", "ws", file.to_str().unwrap()],
    );
    out.expect_code(0);
    let summary: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("uploaded "))
        .collect();
    assert_eq!(summary.len(), 1, "{}", out.stderr);
    assert!(summary[0].contains("1 file, 1000 B"), "{}", summary[0]);
}
