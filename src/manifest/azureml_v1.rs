//! Azure ML v1 run configurations, as the SDK writes them (`Configuration` JSON, `.runconfig`
//! YAML), translated into dataref's own manifest.
//!
//! What runs on the node: `[environment.python.interpreterPath or "python", script,
//! *arguments]` (or a non-empty `command`, run by `/bin/sh -c`) in the document's directory,
//! with `environment.environmentVariables` and `environmentVariables`, and `dataReferences` as
//! dataref reads them anyway. Service-side sections are ignored with one note naming them;
//! sections whose meaning dataref cannot honour are errors naming the field.

use serde_json::{Map, Value, json};

use crate::model::issues::{Issues, describe_value};

/// What the translation adds to the manifest it produces.
pub(super) struct Translated {
    pub manifest: Value,
    /// False when a shell runs the command: it expands `$VAR` itself.
    pub substitute_variables: bool,
    pub notes: Vec<String>,
}

/// Sections that decide what runs on the node; every other section is the service's.
const USED: &[&str] = &[
    "script",
    "arguments",
    "command",
    "environment",
    "environmentVariables",
    "dataReferences",
];

/// Frameworks that run a Python script on one node (the others need Spark or CNTK).
const PYTHON_FRAMEWORKS: &[&str] = &["python", "pytorch", "tensorflow"];

pub(super) fn translate(config: &Value, issues: &mut Issues) -> Option<Translated> {
    let Value::Object(top) = config else {
        issues.push(
            "",
            format!("expected an object, got {}", describe_value(config)),
        );
        return None;
    };
    refuse_what_cannot_be_honoured(top, issues);
    let (command, substitute_variables) = command(top, issues)?;
    let mut manifest = Map::new();
    manifest.insert("command".into(), json!(command));
    let environment = environment(top, issues);
    if !environment.is_empty() {
        manifest.insert("environment".into(), Value::Object(environment));
    }
    if let Some(refs) = top.get("dataReferences").filter(|v| !v.is_null()) {
        // Nulls in Azure ML's spellings are absent fields to the reference parser.
        manifest.insert("dataReferences".into(), refs.clone());
    }
    let ignored: Vec<&str> = top
        .iter()
        .filter(|(key, value)| !USED.contains(&key.as_str()) && !is_empty(value))
        .map(|(key, _)| key.as_str())
        .collect();
    let notes = match ignored.is_empty() {
        true => Vec::new(),
        false => vec![format!(
            "ignored service-side sections of the run configuration: {}",
            ignored.join(", ")
        )],
    };
    Some(Translated {
        manifest: Value::Object(manifest),
        substitute_variables,
        notes,
    })
}

/// Dataset inputs and outputs, several nodes, a distributed launcher, Spark, a snapshot on a
/// datastore, credential passthrough: none can be done by a node agent, and dropping them
/// silently would run a different job.
fn refuse_what_cannot_be_honoured(top: &Map<String, Value>, issues: &mut Issues) {
    for (field, what) in [
        ("data", "Dataset inputs"),
        ("outputData", "Dataset outputs"),
        ("datacaches", "Dataset caches"),
    ] {
        if top.get(field).is_some_and(|v| !is_empty(v)) {
            issues.push(
                field,
                format!(
                    "{what} are not supported by dataref; use dataReferences (datastore paths)"
                ),
            );
        }
    }
    match top.get("nodeCount") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(other) => issues.push(
            "nodeCount",
            format!(
                "dataref runs a job on one node; got {} (submit one job per node)",
                describe_value(other)
            ),
        ),
    }
    match top.get("communicator") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() || s.eq_ignore_ascii_case("none") => {}
        Some(other) => issues.push(
            "communicator",
            format!(
                "distributed launchers are not supported by dataref; got {} (use \"None\")",
                describe_value(other)
            ),
        ),
    }
    match top.get("framework") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if PYTHON_FRAMEWORKS.contains(&s.to_ascii_lowercase().as_str()) => {}
        Some(other) => issues.push(
            "framework",
            format!(
                "dataref runs Python scripts; framework {} is not supported",
                describe_value(other)
            ),
        ),
    }
    if top
        .get("sourceDirectoryDataStore")
        .is_some_and(|v| !is_empty(v))
    {
        issues.push(
            "sourceDirectoryDataStore",
            "a source directory on a datastore is not supported; run from the directory the \
             run configuration is in",
        );
    }
    if top.get("credentialPassthrough") == Some(&Value::Bool(true)) {
        issues.push(
            "credentialPassthrough",
            "credential passthrough is not supported: the node has no user token; use a \
             datastore's own credentials",
        );
    }
}

/// The argv to run, and whether dataref substitutes `$VAR` in it.
fn command(top: &Map<String, Value>, issues: &mut Issues) -> Option<(Vec<String>, bool)> {
    // `ScriptRunConfig(command=…)` replaces the script; the service runs it with a shell.
    let shell_line = match top.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => {
            let words: Option<Vec<String>> = items.iter().map(scalar_text).collect();
            match words {
                Some(words) => Some(words.join(" ")),
                None => {
                    issues.push("command", "expected strings and numbers only");
                    return None;
                }
            }
        }
        Some(other) => {
            issues.push(
                "command",
                format!("expected a string or a list, got {}", describe_value(other)),
            );
            return None;
        }
    };
    if let Some(line) = shell_line {
        return Some((vec!["/bin/sh".into(), "-c".into(), line], false));
    }
    let script = match top.get("script") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            issues.push(
                "script",
                "required: the training script to run (or a non-empty command)",
            );
            return None;
        }
        Some(other) => {
            issues.push(
                "script",
                format!("expected a string, got {}", describe_value(other)),
            );
            return None;
        }
    };
    let interpreter = top
        .get("environment")
        .and_then(|e| e.get("python"))
        .and_then(|p| p.get("interpreterPath"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("python");
    let mut argv = vec![interpreter.to_owned(), script];
    match top.get("arguments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match scalar_text(item) {
                    Some(text) => argv.push(text),
                    None => issues.push(
                        format!("arguments[{i}]"),
                        format!("expected a string or number, got {}", describe_value(item)),
                    ),
                }
            }
        }
        Some(other) => issues.push(
            "arguments",
            format!("expected a list, got {}", describe_value(other)),
        ),
    }
    Some((argv, true))
}

/// `environment.environmentVariables`, then the top-level `environmentVariables` over them.
fn environment(top: &Map<String, Value>, issues: &mut Issues) -> Map<String, Value> {
    let mut merged = Map::new();
    let sources = [
        (
            "environment.environmentVariables",
            top.get("environment")
                .and_then(|e| e.get("environmentVariables")),
        ),
        ("environmentVariables", top.get("environmentVariables")),
    ];
    for (path, value) in sources {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Object(vars)) => {
                for (name, value) in vars {
                    match value {
                        Value::Null => {}
                        other => match scalar_text(other) {
                            Some(text) => {
                                merged.insert(name.clone(), Value::String(text));
                            }
                            None => issues.push(
                                format!("{path}.{name}"),
                                format!("expected a string, got {}", describe_value(other)),
                            ),
                        },
                    }
                }
            }
            Some(other) => issues.push(
                path,
                format!("expected an object, got {}", describe_value(other)),
            ),
        }
    }
    merged
}

/// Python's `str()` of a scalar, as the service passes it on.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(true) => Some("True".into()),
        Value::Bool(false) => Some("False".into()),
        _ => None,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate_ok(config: Value) -> Translated {
        let mut issues = Issues::default();
        let translated = translate(&config, &mut issues).expect("translated");
        assert!(issues.is_empty(), "{:?}", issues.0);
        translated
    }

    fn problems(config: Value) -> Vec<String> {
        let mut issues = Issues::default();
        let _ = translate(&config, &mut issues);
        issues.0.iter().map(|i| i.path.clone()).collect()
    }

    #[test]
    fn script_and_arguments_run_with_the_interpreter() {
        let t = translate_ok(json!({
            "script": "train.py",
            "arguments": ["--lr", 0.5, "--flag", true, "--data", "$AZUREML_DATAREFERENCE_x"],
            "environment": {"python": {"interpreterPath": "/opt/py/bin/python3"},
                            "environmentVariables": {"A": "1", "B": "env"}},
            "environmentVariables": {"B": "top", "C": 3},
        }));
        assert_eq!(
            t.manifest["command"],
            json!([
                "/opt/py/bin/python3",
                "train.py",
                "--lr",
                "0.5",
                "--flag",
                "True",
                "--data",
                "$AZUREML_DATAREFERENCE_x"
            ])
        );
        assert_eq!(
            t.manifest["environment"],
            json!({"A": "1", "B": "top", "C": "3"})
        );
        assert!(t.substitute_variables);
    }

    #[test]
    fn a_command_replaces_the_script_and_runs_in_a_shell() {
        let t = translate_ok(json!({"script": "x.py", "command": ["python", "t.py", "--n", 2]}));
        assert_eq!(
            t.manifest["command"],
            json!(["/bin/sh", "-c", "python t.py --n 2"])
        );
        assert!(!t.substitute_variables);
        let t = translate_ok(json!({"script": "t.py", "command": ""}));
        assert_eq!(t.manifest["command"], json!(["python", "t.py"]));
    }

    #[test]
    fn service_sections_are_named_in_one_note() {
        let t = translate_ok(json!({
            "script": "t.py", "target": "cpu-cluster", "docker": {"useDocker": true},
            "history": {"outputCollection": true}, "data": {}, "priority": null,
        }));
        assert_eq!(t.notes.len(), 1);
        assert!(
            t.notes[0].ends_with("target, docker, history"),
            "{}",
            t.notes[0]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_field() {
        let paths = problems(json!({
            "script": "t.py",
            "data": {"d": {"dataLocation": {}}},
            "outputData": {"o": {}},
            "datacaches": [{}],
            "nodeCount": 2,
            "communicator": "Mpi",
            "framework": "PySpark",
            "sourceDirectoryDataStore": "ds",
            "credentialPassthrough": true,
        }));
        assert_eq!(
            paths,
            [
                "data",
                "outputData",
                "datacaches",
                "nodeCount",
                "communicator",
                "framework",
                "sourceDirectoryDataStore",
                "credentialPassthrough"
            ]
        );
        assert_eq!(problems(json!({"arguments": []})), ["script"]);
    }
}
