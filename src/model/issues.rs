//! Helpers for validating hand-written JSON with *all* problems reported at once.
//!
//! serde's derive stops at the first error and cannot suggest a field name, so manifests and
//! registry entries are walked as `serde_json::Value`s. Every problem becomes an `Issue` naming
//! its JSON path (`data_references.train.mode`) and what was expected.

use std::fmt;

use serde_json::{Map, Value};

/// One problem in a document, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The problems found so far.
#[derive(Debug, Default, Clone)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Issue> {
        self.0.iter()
    }
}

/// Joins a JSON path and a key: `data_references` + `train` → `data_references.train`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A short description of a JSON value's type, for "expected X, got Y" messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The closest known name to `unknown`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (*k, strsim::jaro_winkler(&lower, &k.to_ascii_lowercase())))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// A JSON object being validated, with its path.
pub struct Object<'a> {
    pub path: String,
    pub map: &'a Map<String, Value>,
}

impl<'a> Object<'a> {
    /// `value` as an object, or an issue.
    pub fn new(value: &'a Value, path: &str, issues: &mut Issues) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self {
                path: path.to_owned(),
                map,
            }),
            other => {
                issues.push(
                    path,
                    format!("expected an object, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reports every key not in `known`, with a "did you mean" hint when one is close.
    pub fn reject_unknown(&self, known: &[&str], issues: &mut Issues) {
        for key in self.map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = match did_you_mean(key, known) {
                Some(suggestion) => format!("unknown field; did you mean \"{suggestion}\"?"),
                None => format!("unknown field; expected one of: {}", known.join(", ")),
            };
            issues.push(self.field_path(key), hint);
        }
    }

    /// The value of `key` unless it is absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn string(&self, key: &str, issues: &mut Issues) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                issues.push(
                    self.field_path(key),
                    format!("expected a string, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A required non-empty string.
    pub fn required_string(&self, key: &str, issues: &mut Issues) -> Option<&'a str> {
        match self.string(key, issues) {
            Some(s) if !s.is_empty() => Some(s),
            Some(_) => {
                issues.push(self.field_path(key), "must not be empty");
                None
            }
            None => {
                if self.get(key).is_none() {
                    issues.push(self.field_path(key), "required field is missing");
                }
                None
            }
        }
    }

    pub fn bool(&self, key: &str, issues: &mut Issues) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                issues.push(
                    self.field_path(key),
                    format!("expected true or false, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A non-negative integer.
    pub fn u64(&self, key: &str, issues: &mut Issues) -> Option<u64> {
        match self.get(key)? {
            Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
            other => {
                issues.push(
                    self.field_path(key),
                    format!(
                        "expected a non-negative integer, got {}",
                        describe_value(other)
                    ),
                );
                None
            }
        }
    }
}

/// A value's type, and the value itself when it is short and not a container.
pub fn describe_value(value: &Value) -> String {
    match value {
        Value::Number(n) => format!("{n}"),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        other => type_name(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["datastores", "data_references", "command", "working_dir"];
        assert_eq!(did_you_mean("comand", &known), Some("command"));
        assert_eq!(
            did_you_mean("data_refrences", &known),
            Some("data_references")
        );
        assert_eq!(did_you_mean("workingdir", &known), Some("working_dir"));
        assert_eq!(did_you_mean("zzz", &known), None);
    }
}
