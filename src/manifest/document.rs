//! A job document's bytes as a JSON value, and the dialect it is written in.
//!
//! Users hand dataref what their tools wrote: dataref's own manifest, the Azure ML v1 run
//! configuration (the `Configuration` JSON the SDK posts, the submission body wrapping it, or
//! the `.runconfig` YAML `RunConfiguration.save()` writes), or an Azure ML v2 command-job YAML.
//! The dialect is judged by content, never by the file name.

use serde_json::{Map, Number, Value};

use crate::model::issues::Issue;

/// The language a job document is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// dataref's own manifest (JSON or YAML).
    Dataref,
    /// An Azure ML v1 run configuration (`Configuration` JSON or `.runconfig` YAML).
    AzureMlV1,
    /// The v1 SDK's whole submission body: `{"Configuration": {…}, "SnapshotId": …}`.
    AzureMlV1Submission,
    /// An Azure ML v2 command job (`az ml job create --file` YAML).
    AzureMlV2,
    /// The REST body `azure-ai-ml` sends the service (`{"properties": {"jobType": …}}`):
    /// recognised only to say what to give instead.
    AzureMlV2Rest,
}

impl Dialect {
    pub fn describe(self) -> &'static str {
        match self {
            Dialect::Dataref => "dataref manifest",
            Dialect::AzureMlV1 => "Azure ML v1 run configuration",
            Dialect::AzureMlV1Submission => "Azure ML v1 submission body",
            Dialect::AzureMlV2 => "Azure ML v2 command job",
            Dialect::AzureMlV2Rest => "Azure ML v2 REST request body",
        }
    }
}

/// Fields only dataref's manifest has: with any of them, the document is dataref's own (and
/// a v1 or v2 field in it is reported as unknown, not silently reinterpreted).
const DATAREF_MARKERS: &[&str] = &[
    "datastores",
    "data_references",
    "working_dir",
    "upload_policy",
    "grace_period_seconds",
    "mount",
    "memory_budget_bytes",
];

/// Sections only a v1 run configuration has.
const V1_MARKERS: &[&str] = &[
    "script",
    "arguments",
    "framework",
    "communicator",
    "target",
    "nodeCount",
    "history",
];
/// Sections only a v2 job has.
const V2_MARKERS: &[&str] = &[
    "inputs",
    "outputs",
    "code",
    "environment_variables",
    "compute",
    "$schema",
];

/// Which dialect a decoded document is written in.
pub fn detect(value: &Value) -> Dialect {
    let Value::Object(top) = value else {
        return Dialect::Dataref; // reported as "expected an object" by the manifest parser
    };
    if matches!(top.get("Configuration"), Some(Value::Object(_))) {
        return Dialect::AzureMlV1Submission;
    }
    if DATAREF_MARKERS.iter().any(|key| top.contains_key(*key)) {
        return Dialect::Dataref;
    }
    if let Some(Value::Object(properties)) = top.get("properties") {
        if properties.contains_key("jobType") {
            return Dialect::AzureMlV2Rest;
        }
    }
    if V1_MARKERS.iter().any(|key| top.contains_key(*key)) {
        return Dialect::AzureMlV1;
    }
    if matches!(top.get("command"), Some(Value::Array(_))) {
        return Dialect::Dataref;
    }
    let command_is_a_line = matches!(top.get("command"), Some(Value::String(_)));
    let is_command_job = matches!(top.get("type"), Some(Value::String(t)) if t == "command");
    if command_is_a_line || is_command_job || V2_MARKERS.iter().any(|k| top.contains_key(*k)) {
        return Dialect::AzureMlV2;
    }
    Dialect::Dataref
}

/// Decodes a document: JSON when it starts with `{` or `[`, YAML otherwise (YAML's nulls,
/// numbers and booleans become JSON's; mapping keys become strings).
pub fn decode(bytes: &[u8]) -> Result<Value, Issue> {
    let problem = |message: String| Issue {
        path: String::new(),
        message,
    };
    // A file that is not UTF-8 is there but not a document: invalid (65), not missing (66).
    let text = std::str::from_utf8(bytes).map_err(|e| {
        problem(format!(
            "invalid JSON: not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let first = text.trim_start().chars().next();
    if matches!(first, Some('{' | '[')) {
        return serde_json::from_str(text).map_err(|e| {
            problem(format!(
                "invalid JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ))
        });
    }
    // The YAML parser takes time quadratic in the nesting of flow collections before its own
    // recursion limit stops it (100,000 `[`: 28 s); a daemon parses bodies of other users.
    if flow_depth(text) > MAX_FLOW_DEPTH {
        return Err(problem(format!(
            "invalid YAML: nested more than {MAX_FLOW_DEPTH} levels deep"
        )));
    }
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        problem(format!("invalid YAML{at}: {e}"))
    })?;
    Ok(yaml_to_json(yaml))
}

/// Deeper than any job document nests, far below where parsing gets slow.
const MAX_FLOW_DEPTH: usize = 256;

/// The deepest nesting of `[` and `{` (quotes ignored: a string of brackets only counts more).
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => yaml_number(&n),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => {
            let mut object = Map::new();
            for (key, value) in map {
                object.insert(yaml_key(key), yaml_to_json(value));
            }
            Value::Object(object)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

fn yaml_number(n: &serde_yaml_ng::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::Number(i.into())
    } else if let Some(u) = n.as_u64() {
        Value::Number(u.into())
    } else {
        n.as_f64()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(n.to_string()))
    }
}

/// Mapping keys as text: a v1 reference named by `uuid4().hex` may be all digits, which YAML
/// reads as a number.
fn yaml_key(key: serde_yaml_ng::Value) -> String {
    use serde_yaml_ng::Value as Y;
    match key {
        Y::String(s) => s,
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        Y::Null => String::new(),
        other => serde_yaml_ng::to_string(&other)
            .unwrap_or_default()
            .trim_end()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_yaml_decode_to_the_same_value() {
        let from_json = decode(br#"{"a": [1, true, null, "x"], "b": {"c": 0.5}}"#).unwrap();
        let from_yaml = decode(b"a: [1, true, ~, x]\nb:\n  c: 0.5\n").unwrap();
        assert_eq!(from_json, from_yaml);
    }

    #[test]
    fn yaml_nulls_and_numeric_keys_are_kept_as_written_forms() {
        let value = decode(b"refs:\n  1234:\n    pathOnDataStore:\n  abc: {}\n").unwrap();
        assert_eq!(
            value,
            json!({"refs": {"1234": {"pathOnDataStore": null}, "abc": {}}})
        );
    }

    #[test]
    fn errors_name_the_format_and_position() {
        let json_error = decode(br#"{"command": ["true"],"#).unwrap_err();
        assert!(json_error.message.starts_with("invalid JSON at line 1"));
        let yaml_error = decode(b"a: [1, 2\nb: 3\n").unwrap_err();
        assert!(
            yaml_error.message.starts_with("invalid YAML at line"),
            "{}",
            yaml_error.message
        );
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let too_deep = decode(deep.as_bytes()).unwrap_err();
        assert!(
            too_deep.message.contains("levels deep"),
            "{}",
            too_deep.message
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let binary = decode(&[0x7b, 0xff, 0xfe]).unwrap_err();
        assert!(binary.message.contains("not UTF-8"));
    }

    #[test]
    fn dialects_are_recognised_by_content() {
        let cases = [
            (json!({"command": ["python3"]}), Dialect::Dataref),
            (
                json!({"dataReferences": {}, "command": ["x"]}),
                Dialect::Dataref,
            ),
            (
                json!({"script": "train.py", "dataReferences": {}}),
                Dialect::AzureMlV1,
            ),
            (
                json!({"Configuration": {"script": "t.py"}, "SnapshotId": "x"}),
                Dialect::AzureMlV1Submission,
            ),
            (json!({"command": "python t.py"}), Dialect::AzureMlV2),
            (json!({"type": "command", "inputs": {}}), Dialect::AzureMlV2),
            (json!(["not", "an", "object"]), Dialect::Dataref),
            // A manifest with a stray Azure ML field is still a manifest (the field is
            // reported unknown), and so is one whose command is a string (reported).
            (
                json!({"command": ["python3"], "target": "gpu", "datastores": {}}),
                Dialect::Dataref,
            ),
            (
                json!({"command": "python3 t.py", "data_references": {}}),
                Dialect::Dataref,
            ),
            (
                json!({"properties": {"jobType": "Command"}}),
                Dialect::AzureMlV2Rest,
            ),
        ];
        for (value, dialect) in cases {
            assert_eq!(detect(&value), dialect, "{value}");
        }
    }
}
