//! Hostile manifests (the daemon takes them from any allowed user): the parser never panics,
//! whatever the bytes, and a manifest it accepts never puts a reference outside absolute,
//! normalised paths.

use std::path::{Component, Path};

use dataref::registry::Registry;
use proptest::prelude::*;
use serde_json::{Value, json};

fn registry() -> Registry {
    Registry::default()
}

/// Strings that probe names and paths: traversal, absolute paths, separators, NUL, Unicode
/// look-alikes, very long segments.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just("../../etc".to_owned()),
        Just("/etc/passwd".to_owned()),
        Just("a\\b".to_owned()),
        Just("a\0b".to_owned()),
        Just("ａ／ｂ".to_owned()),
        Just("x".repeat(1000)),
        Just(String::new()),
        "[a-z/.]{0,12}",
        any::<String>(),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        hostile_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(hostile_text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Manifest-shaped documents with hostile values where the fields go.
fn hostile_manifest() -> impl Strategy<Value = Value> {
    (
        hostile_text(),
        hostile_text(),
        hostile_text(),
        prop_oneof![
            Just("mount"),
            Just("download"),
            Just("upload"),
            Just("bogus")
        ],
        prop::option::of(hostile_value()),
        any::<bool>(),
    )
        .prop_map(|(name, path, compute, mode, extra, local_root)| {
            let mut manifest = json!({
                "datastores": {
                    "ds": if local_root {
                        json!({"kind": "local", "root": "/tmp"})
                    } else {
                        json!({"kind": "azure_blob", "account_name": name,
                               "container_name": "data", "anonymous": true})
                    }
                },
                "data_references": {
                    name.clone(): {"datastore": "ds", "path_on_datastore": path,
                                   "mode": mode, "path_on_compute": compute},
                },
                "command": ["true", name],
            });
            if let Some(extra) = extra {
                manifest["data_references"]["extra"] = extra;
            }
            manifest
        })
}

/// Manifests that are often valid, with hostile paths: what the parser accepts must be safe.
fn mostly_valid_manifest() -> impl Strategy<Value = Value> {
    (
        "[a-z]{1,8}",
        hostile_text(),
        hostile_text(),
        prop_oneof![Just("download"), Just("upload")],
    )
        .prop_map(|(name, path, compute, mode)| {
            json!({
                "datastores": {"ds": {"kind": "local", "root": "/tmp"}},
                "data_references": {
                    name: {"datastore": "ds", "path_on_datastore": path, "mode": mode,
                           "path_on_compute": compute},
                },
                "command": ["true"],
            })
        })
}

fn check_accepted(plan: &dataref::manifest::JobPlan) -> Result<(), TestCaseError> {
    for r in &plan.references {
        prop_assert!(r.local.is_absolute(), "{:?}", r.local);
        for component in r.local.components() {
            prop_assert!(
                !matches!(component, Component::ParentDir | Component::CurDir),
                "{:?}",
                r.local
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn accepted_hostile_paths_are_absolute_and_normalised(manifest in mostly_valid_manifest()) {
        let base = Path::new("/tmp");
        let bytes = serde_json::to_vec(&manifest).unwrap();
        if let Ok(plan) = dataref::manifest::parse_bytes(&bytes, &base.join("m.json"), base, &registry()) {
            check_accepted(&plan)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let base = Path::new("/tmp");
        let _ = dataref::manifest::parse_bytes(&bytes, &base.join("m.json"), base, &registry());
    }

    #[test]
    fn hostile_manifests_never_panic_and_accepted_ones_stay_normalised(manifest in hostile_manifest()) {
        let base = Path::new("/tmp");
        let bytes = serde_json::to_vec(&manifest).unwrap();
        if let Ok(plan) = dataref::manifest::parse_bytes(&bytes, &base.join("m.json"), base, &registry()) {
            check_accepted(&plan)?;
        }
    }
}

#[test]
fn the_safety_check_is_not_vacuous() {
    // `a/./b//c` is accepted, normalised, and passes the same check the properties use.
    let base = Path::new("/tmp");
    let manifest = json!({
        "datastores": {"ds": {"kind": "local", "root": "/tmp"}},
        "data_references": {"x": {"datastore": "ds", "path_on_datastore": "a/./b//c",
                                  "mode": "download", "path_on_compute": "in/./x/../y"}},
        "command": ["true"],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let plan = dataref::manifest::parse_bytes(&bytes, &base.join("m.json"), base, &registry())
        .expect("valid");
    check_accepted(&plan).unwrap();
    assert_eq!(plan.references[0].path_on_datastore.as_str(), "a/b/c");
    assert_eq!(plan.references[0].local, Path::new("/tmp/ds/in/y/a/b/c"));
}

/// Regressions kept by hand: each once looked worth a try.
#[test]
fn known_hostile_manifests_are_refused_with_issues() {
    let base = Path::new("/tmp");
    for manifest in [
        json!({"data_references": {"x": {"datastore": "ds", "path_on_datastore": "../../etc",
                                          "mode": "download"}},
               "datastores": {"ds": {"kind": "local", "root": "/tmp"}}, "command": ["true"]}),
        json!({"data_references": {"../x": {"datastore": "ds", "mode": "download"}},
               "datastores": {"ds": {"kind": "local", "root": "/tmp"}}, "command": ["true"]}),
        json!({"data_references": {"x": {"datastore": "ds", "path_on_datastore": "a\u{0}b",
                                          "mode": "download"}},
               "datastores": {"ds": {"kind": "local", "root": "/tmp"}}, "command": ["true"]}),
        json!({"data_references": {"x": {"datastore": "ds", "path_on_datastore": "a\\b",
                                          "mode": "download"}},
               "datastores": {"ds": {"kind": "local", "root": "/tmp"}}, "command": ["true"]}),
        json!({"data_references": {"x": {"datastore": "ds", "path_on_datastore": "x".repeat(1000),
                                          "mode": "download"}},
               "datastores": {"ds": {"kind": "local", "root": "/tmp"}}, "command": ["true"]}),
    ] {
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let issues =
            dataref::manifest::parse_bytes(&bytes, &base.join("m.json"), base, &registry())
                .expect_err(&format!("accepted {manifest}"));
        assert!(
            issues.iter().any(|i| i.path.starts_with("data_references")),
            "{manifest}: {issues:?}"
        );
    }
}
