//! The child's environment and `$VAR` substitution in its arguments.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

use crate::manifest::JobPlan;

/// Variables dataref never passes on: systemd's notification channel (the child must not be
/// able to tell systemd we are ready or alive) and secret-bearing variables.
fn is_withheld(name: &str, secret_vars: &[String]) -> bool {
    name == "NOTIFY_SOCKET"
        || name.starts_with("WATCHDOG_")
        || secret_vars.iter().any(|s| s == name)
}

/// Set (inherited by dataref's own children) when dataref, not the user, set
/// `RUST_LIB_BACKTRACE=0` (see `cli::quiet_library_backtraces`): the script gets neither.
pub const OWN_LIB_BACKTRACE: &str = "DATAREF_SET_RUST_LIB_BACKTRACE";

/// The child's environment: `base` (dataref's own, or empty under the daemon), plus the
/// manifest's `environment`, plus the reference variables; minus withheld variables.
pub fn child_environment(
    plan: &JobPlan,
    base: impl IntoIterator<Item = (OsString, OsString)>,
) -> BTreeMap<OsString, OsString> {
    let secret_vars = plan.secret_env_vars();
    let mut env: BTreeMap<OsString, OsString> = base
        .into_iter()
        .filter(|(k, _)| !k.to_str().is_some_and(|k| is_withheld(k, secret_vars)))
        .collect();
    if env.remove(OsStr::new(OWN_LIB_BACKTRACE)).is_some() {
        env.remove(OsStr::new("RUST_LIB_BACKTRACE"));
    }
    for (key, value) in &plan.environment {
        if !is_withheld(key, secret_vars) {
            env.insert(key.into(), value.into());
        }
    }
    // The script starts in working_dir; an inherited PWD would name dataref's directory.
    env.insert("PWD".into(), plan.working_dir.clone().into());
    for reference in &plan.references {
        let local: OsString = reference.local.clone().into();
        env.insert(reference.variable().into(), local.clone());
        env.insert(reference.mode_variable().into(), local);
    }
    env
}

/// Replaces `$NAME` and `${NAME}` with the variable's value. `$NAME` takes the longest
/// identifier (`$AZUREML_DATAREFERENCE_train_v2` never means `<train>_v2`); an unknown
/// variable, a lone `$` and `$1` stay as written.
pub fn substitute(arg: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) if is_identifier(&braced[..end]) => (&braced[..end], end + 2),
                _ => ("", 0),
            }
        } else {
            let len = identifier_len(after);
            (&after[..len], len)
        };
        match (consumed, lookup(name)) {
            (n, Some(value)) if n > 0 => {
                out.push_str(&value);
                rest = &after[consumed..];
            }
            _ => {
                // Not a known variable: keep the `$` and go on after it.
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn identifier_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return 0,
    }
    chars
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map(|(i, _)| i)
        .unwrap_or(s.len())
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && identifier_len(s) == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "AZUREML_DATAREFERENCE_train" => Some("/data/train".into()),
            "AZUREML_DATAREFERENCE_train_v2" => Some("/data/v2".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        }
    }

    /// A variable named by an `{"env": VAR}` secret of a referenced datastore, `NOTIFY_SOCKET`
    /// and `WATCHDOG_*` never reach the child, not even through the manifest's `environment`.
    #[test]
    fn child_environment_withholds_secrets_and_systemd_variables() {
        use crate::model::issues::Issues;
        use crate::registry::Registry;
        // The secret's variable must be set for validation to pass; PATH always is, and
        // setting a variable of our own would race with other tests' threads.
        let manifest = serde_json::json!({
            "datastores": {"az": {"kind": "azure_blob", "account_name": "acct",
                                  "container_name": "cont", "account_key": {"env": "PATH"}},
                           // Defined but not referenced: its secret is withheld all the same.
                           "unused": {"kind": "azure_file", "account_name": "acct",
                                      "share_name": "share", "sas_token": {"env": "UNUSED_SAS"}}},
            "data_references": {"out": {"datastore": "az", "path_on_datastore": "o",
                                        "mode": "upload", "path_on_compute": "outputs"}},
            "command": ["true"],
            "environment": {"FROM_MANIFEST": "1", "NOTIFY_SOCKET": "/m", "WATCHDOG_USEC": "5"}
        });
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        let mut issues = Issues::default();
        let mut registry = Registry::default();
        let registered = serde_json::json!({"kind": "azure_blob", "account_name": "acct",
            "container_name": "cont", "account_key": {"env": "REGISTRY_KEY"}});
        let spec = crate::model::DatastoreSpec::parse(&registered, "r", w, &mut issues);
        registry
            .datastores
            .insert("registered".into(), spec.unwrap());
        let plan =
            crate::manifest::parse(&manifest, &w.join("job.json"), w, &registry, &mut issues);
        assert!(issues.is_empty(), "{:?}", issues.0);
        let plan = plan.expect("a valid manifest");
        let base = [
            ("PATH", "s3cr3t-value"),
            ("UNUSED_SAS", "s3cr3t-value"),
            ("REGISTRY_KEY", "s3cr3t-value"),
            ("NOTIFY_SOCKET", "/run/notify"),
            ("WATCHDOG_USEC", "1000"),
            ("WATCHDOG_PID", "1"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = child_environment(&plan, base);
        for withheld in [
            "PATH",
            "UNUSED_SAS",
            "REGISTRY_KEY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ] {
            assert!(!env.contains_key(&OsString::from(withheld)), "{withheld}");
        }
        assert!(env.values().all(|v| v != "s3cr3t-value"));
        let get = |k: &str| env.get(&OsString::from(k)).cloned();
        assert_eq!(get("HOME"), Some("/root".into()));
        assert_eq!(get("FROM_MANIFEST"), Some("1".into()));
        assert_eq!(get("PWD"), Some(w.as_os_str().to_owned()));
        let outputs = OsString::from(w.join("outputs"));
        assert_eq!(get("AZURE_ML_OUTPUT_out"), Some(outputs.clone()));
        assert_eq!(get("AZUREML_DATAREFERENCE_out"), Some(outputs));

        // dataref's own RUST_LIB_BACKTRACE=0 stays with dataref; a user's reaches the script.
        let ours = [("RUST_LIB_BACKTRACE", "0"), (OWN_LIB_BACKTRACE, "1")];
        let env = child_environment(&plan, ours.map(|(k, v)| (k.into(), v.into())));
        assert!(!env.contains_key(OsStr::new("RUST_LIB_BACKTRACE")));
        assert!(!env.contains_key(OsStr::new(OWN_LIB_BACKTRACE)));
        let users = [("RUST_LIB_BACKTRACE", "full")];
        let env = child_environment(&plan, users.map(|(k, v)| (k.into(), v.into())));
        assert_eq!(
            env.get(OsStr::new("RUST_LIB_BACKTRACE")),
            Some(&OsString::from("full"))
        );
    }

    #[test]
    fn substitution_rules() {
        let cases = [
            ("$AZUREML_DATAREFERENCE_train", "/data/train"),
            ("--data=$AZUREML_DATAREFERENCE_train", "--data=/data/train"),
            ("$AZUREML_DATAREFERENCE_train_v2", "/data/v2"),
            ("${AZUREML_DATAREFERENCE_train}_v2", "/data/train_v2"),
            ("$AZUREML_DATAREFERENCE_train/x", "/data/train/x"),
            ("$UNKNOWN_VAR/x", "$UNKNOWN_VAR/x"),
            ("${UNKNOWN}", "${UNKNOWN}"),
            ("cost $5", "cost $5"),
            ("$", "$"),
            ("a$$HOME", "a$/root"),
            ("${HOME", "${HOME"),
            ("${HOME}${HOME}", "/root/root"),
            ("naïve $HOME é", "naïve /root é"),
        ];
        for (input, expected) in cases {
            assert_eq!(substitute(input, vars), expected, "{input}");
        }
    }
}
