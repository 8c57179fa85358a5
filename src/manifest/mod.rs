//! The job manifest: parsing, validation and the resolved plan.
//!
//! Loading a manifest never touches anything but the files it reads: every problem is collected
//! (with its JSON path) and reported together, before any directory is created or any storage is
//! contacted. The result is a `JobPlan` in which every path is absolute and every reference knows
//! its datastore, mode and local path.

mod azureml_v1;
mod azureml_v2;
mod document;
mod reference;
mod uri;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::model::budget::{DEFAULT_MEMORY_BUDGET, MIN_MEMORY_BUDGET};
use crate::model::datastore::{DatastoreSpec, SecretRef, check_datastore_name};
use crate::model::issues::{Issue, Issues, Object, describe_value, type_name};
use crate::model::{MountSettings, UploadPolicy, Verify, normalize_lexically, resolve_path};
use crate::registry::Registry;
pub use document::{Dialect, decode as decode_document};
pub use reference::{Mode, Reference};

/// Top-level manifest fields (ours; the Azure ML spellings apply only to reference entries).
const TOP_LEVEL_FIELDS: &[&str] = &[
    "datastores",
    "data_references",
    "dataReferences",
    "command",
    "working_dir",
    "environment",
    "upload_policy",
    "grace_period_seconds",
    "mount",
    "memory_budget_bytes",
    "verify",
];

pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// A validated job, every path absolute.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub manifest_path: PathBuf,
    pub working_dir: PathBuf,
    pub references: Vec<Reference>,
    pub command: Vec<String>,
    /// The manifest's `environment`, in file order.
    pub environment: Vec<(String, String)>,
    pub upload_policy: UploadPolicy,
    pub grace_period: Duration,
    pub mount: MountSettings,
    pub memory_budget_bytes: u64,
    /// How downloads check what they received.
    pub verify: Verify,
    /// Names of the datastores the manifest defines itself (the others come from the registry).
    pub inline_datastores: Vec<String>,
    /// The language the job was written in.
    pub dialect: Dialect,
    /// Whether dataref replaces `$VAR` in `command` (not when a shell runs it: it expands them).
    pub substitute_variables: bool,
    /// What dataref chose to ignore in the document: logged when the job starts, printed by
    /// `validate`.
    pub notes: Vec<String>,
    secret_env_vars: Vec<String>,
}

impl JobPlan {
    /// Variables named by `{"env": VAR}` secret references: removed from the child's environment.
    pub fn secret_env_vars(&self) -> &[String] {
        &self.secret_env_vars
    }
}

/// Every variable named by an `{"env": VAR}` secret of any datastore the job can see (inline or
/// registered), used or not: the script must never receive a secret.
fn collect_secret_env_vars<'a>(stores: impl Iterator<Item = &'a DatastoreSpec>) -> Vec<String> {
    let mut vars: Vec<String> = stores
        .filter_map(|spec| spec.credential()?.secret_ref())
        .filter_map(|s| match s {
            SecretRef::Env(var) => Some(var.clone()),
            SecretRef::File(_) | SecretRef::UserFile { .. } => None,
        })
        .collect();
    vars.sort();
    vars.dedup();
    vars
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest file itself is missing or unreadable.
    #[error("cannot read manifest {}: {source}", path.display())]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest is invalid; every problem is listed, one per line, each starting with its
    /// JSON path.
    #[error("{}", list_problems(path, issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

fn list_problems(path: &Path, issues: &[Issue]) -> String {
    let mut message = format!(
        "{} is invalid ({} problem{}):",
        path.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        message.push_str(&format!("\n  {issue}"));
    }
    message
}

/// Reads and validates a manifest file. Touches nothing on disk.
pub fn load(path: &Path, registry: &Registry) -> Result<JobPlan, LoadError> {
    load_with_base(path, None, registry)
}

/// Like `load`, with relative paths resolved against `base` instead of the manifest's own
/// directory (the daemon stores a submitted manifest in its state directory, away from the
/// directory the client submitted it from).
pub fn load_with_base(
    path: &Path,
    base: Option<&Path>,
    registry: &Registry,
) -> Result<JobPlan, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    let absolute = std::path::absolute(path).map_err(|source| LoadError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    let manifest_path = normalize_lexically(&absolute);
    let base = match base {
        Some(base) => base.to_path_buf(),
        None => manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    parse_bytes(&bytes, &manifest_path, &base, registry).map_err(|issues| LoadError::Invalid {
        path: path.to_path_buf(),
        issues,
    })
}

/// Validates a manifest's bytes (a file's, or a request body's). `manifest_path` is recorded
/// in the plan; `base` is the directory relative paths resolve against.
pub fn parse_bytes(
    bytes: &[u8],
    manifest_path: &Path,
    base: &Path,
    registry: &Registry,
) -> Result<JobPlan, Vec<Issue>> {
    let value = document::decode(bytes).map_err(|issue| vec![issue])?;
    let mut issues = Issues::default();
    let plan = match document::detect(&value) {
        Dialect::Dataref => parse(&value, manifest_path, base, registry, &mut issues),
        Dialect::AzureMlV1 => parse_v1(&value, manifest_path, base, registry, &mut issues),
        Dialect::AzureMlV1Submission => {
            let plan = parse_v1(
                &value["Configuration"],
                manifest_path,
                base,
                registry,
                &mut issues,
            )
            .map(|plan| JobPlan {
                dialect: Dialect::AzureMlV1Submission,
                ..plan
            });
            for issue in &mut issues.0 {
                issue.path = join_path("Configuration", &issue.path);
            }
            plan
        }
        Dialect::AzureMlV2 => parse_v2(&value, manifest_path, base, registry, &mut issues),
        Dialect::AzureMlV2Rest => {
            issues.push(
                "properties",
                "this is the REST body azure-ai-ml sends to the service; give dataref the \
                 job's YAML (what az ml job create --file reads)",
            );
            None
        }
    };
    match plan {
        Some(plan) if issues.is_empty() => Ok(plan),
        _ => Err(issues.0),
    }
}

/// A v1 run configuration: translated into a manifest, then validated as one.
fn parse_v1(
    value: &Value,
    manifest_path: &Path,
    base: &Path,
    registry: &Registry,
    issues: &mut Issues,
) -> Option<JobPlan> {
    let translated = azureml_v1::translate(value, issues)?;
    let plan = parse(&translated.manifest, manifest_path, base, registry, issues)?;
    Some(JobPlan {
        dialect: Dialect::AzureMlV1,
        substitute_variables: translated.substitute_variables,
        notes: translated.notes,
        ..plan
    })
}

fn parse_v2(
    value: &Value,
    manifest_path: &Path,
    base: &Path,
    registry: &Registry,
    issues: &mut Issues,
) -> Option<JobPlan> {
    let top = Object::new(value, "", issues)?;
    let job = azureml_v2::parse(&top, base, registry, issues)?;
    // The Azure ML mount variables (`DATASET_MOUNT_*`) in `environment_variables` still apply.
    let no_fields = Value::Object(Default::default());
    let mount = MountSettings::parse(
        &Object::new(&no_fields, "", issues)?,
        &job.environment,
        base,
        issues,
    );
    check_environment_conflicts(&job.environment, &job.references, issues);
    check_secrets(&job.references, &job.inline, issues);
    Some(JobPlan {
        manifest_path: manifest_path.to_path_buf(),
        working_dir: job.working_dir,
        command: job.command,
        environment: job.environment,
        upload_policy: UploadPolicy::Always,
        grace_period: DEFAULT_GRACE_PERIOD,
        mount,
        memory_budget_bytes: DEFAULT_MEMORY_BUDGET,
        verify: Verify::default(),
        inline_datastores: job.inline.keys().cloned().collect(),
        dialect: Dialect::AzureMlV2,
        substitute_variables: false,
        notes: job.notes,
        secret_env_vars: collect_secret_env_vars(registry.datastores.values()),
        references: job.references,
    })
}

/// Validates a parsed manifest. `base` is the directory relative paths resolve against.
pub fn parse(
    value: &Value,
    manifest_path: &Path,
    base: &Path,
    registry: &Registry,
    issues: &mut Issues,
) -> Option<JobPlan> {
    let top = Object::new(value, "", issues)?;
    top.reject_unknown(TOP_LEVEL_FIELDS, issues);

    let (inline, broken) = parse_inline_datastores(&top, base, issues);
    let working_dir = parse_working_dir(&top, base, issues);
    let command = parse_command(&top, issues);
    let environment = parse_environment(&top, issues);
    let upload_policy = UploadPolicy::parse(&top, issues);
    let verify = Verify::parse(&top, issues).unwrap_or_default();
    let grace_period = top
        .u64("grace_period_seconds", issues)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_GRACE_PERIOD);
    let mount = MountSettings::parse(&top, &environment, base, issues);
    let memory_budget_bytes = top
        .u64("memory_budget_bytes", issues)
        .unwrap_or(DEFAULT_MEMORY_BUDGET);
    if memory_budget_bytes < MIN_MEMORY_BUDGET {
        issues.push(
            "memory_budget_bytes",
            format!("must be at least {MIN_MEMORY_BUDGET} (16 MiB), got {memory_budget_bytes}"),
        );
    }

    let datastores = Datastores {
        inline: &inline,
        broken: &broken,
        registry,
    };
    let references = reference::parse_all(&top, &datastores, working_dir.as_deref(), issues);
    check_environment_conflicts(&environment, &references, issues);
    check_secrets(&references, &inline, issues);

    Some(JobPlan {
        manifest_path: manifest_path.to_path_buf(),
        working_dir: working_dir?,
        references,
        command: command?,
        environment,
        upload_policy,
        grace_period,
        mount,
        memory_budget_bytes,
        verify,
        inline_datastores: inline.keys().cloned().collect(),
        dialect: Dialect::Dataref,
        substitute_variables: true,
        notes: Vec::new(),
        secret_env_vars: collect_secret_env_vars(
            inline.values().chain(registry.datastores.values()),
        ),
    })
}

/// Where references find their datastores: the manifest's own first, then the registry.
pub(crate) struct Datastores<'a> {
    inline: &'a BTreeMap<String, DatastoreSpec>,
    /// Inline datastores that are defined but invalid (already reported): references to them
    /// are not reported again as unknown, and they do not fall back to the registry.
    broken: &'a BTreeSet<String>,
    registry: &'a Registry,
}

impl Datastores<'_> {
    fn is_broken(&self, name: &str) -> bool {
        self.broken.contains(name)
    }

    fn get(&self, name: &str) -> Option<&DatastoreSpec> {
        self.inline
            .get(name)
            .or_else(|| self.registry.datastores.get(name))
    }

    fn default_name(&self) -> Option<&str> {
        self.registry.default.as_deref()
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .inline
            .keys()
            .chain(self.registry.datastores.keys())
            .map(String::as_str)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The manifest's own datastores, and the names of those that are defined but invalid.
fn parse_inline_datastores(
    top: &Object<'_>,
    base: &Path,
    issues: &mut Issues,
) -> (BTreeMap<String, DatastoreSpec>, BTreeSet<String>) {
    let mut stores = BTreeMap::new();
    let mut broken = BTreeSet::new();
    let Some(value) = top.get("datastores") else {
        return (stores, broken);
    };
    let Some(obj) = Object::new(value, "datastores", issues) else {
        return (stores, broken);
    };
    for (name, spec) in obj.map {
        let path = obj.field_path(name);
        if let Err(message) = check_datastore_name(name) {
            issues.push(&path, message);
            broken.insert(name.clone());
            continue;
        }
        let Some(spec) = DatastoreSpec::parse(spec, &path, base, issues) else {
            broken.insert(name.clone());
            continue;
        };
        if let DatastoreSpec::Local { root } = &spec {
            if !root.is_dir() {
                issues.push(
                    join_path(&path, "root"),
                    format!("{} is not an existing directory", root.display()),
                );
            }
        }
        stores.insert(name.clone(), spec);
    }
    (stores, broken)
}

fn join_path(path: &str, key: &str) -> String {
    crate::model::issues::join(path, key)
}

fn parse_working_dir(top: &Object<'_>, base: &Path, issues: &mut Issues) -> Option<PathBuf> {
    let dir = match top.string("working_dir", issues) {
        Some(dir) => resolve_path(base, dir),
        None if top.get("working_dir").is_some() => return None,
        None => base.to_path_buf(),
    };
    if !dir.is_dir() {
        issues.push(
            "working_dir",
            format!("{} is not an existing directory", dir.display()),
        );
        return None;
    }
    Some(dir)
}

fn parse_command(top: &Object<'_>, issues: &mut Issues) -> Option<Vec<String>> {
    let expected = "expected a non-empty array of strings, e.g. [\"python3\", \"train.py\"]";
    let Some(value) = top.get("command") else {
        issues.push("command", format!("required field is missing; {expected}"));
        return None;
    };
    let Value::Array(items) = value else {
        issues.push("command", format!("{expected}, got {}", type_name(value)));
        return None;
    };
    if items.is_empty() {
        issues.push("command", expected);
        return None;
    }
    let mut command = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if i == 0 && s.is_empty() => {
                issues.push("command[0]", "the program name must not be empty");
            }
            Value::String(s) if s.contains('\0') => {
                issues.push(format!("command[{i}]"), "must not contain a NUL character");
            }
            Value::String(s) => command.push(s.clone()),
            other => issues.push(
                format!("command[{i}]"),
                format!("expected a string, got {}", describe_value(other)),
            ),
        }
    }
    (command.len() == items.len()).then_some(command)
}

fn parse_environment(top: &Object<'_>, issues: &mut Issues) -> Vec<(String, String)> {
    let mut environment = Vec::new();
    let Some(value) = top.get("environment") else {
        return environment;
    };
    let Some(obj) = Object::new(value, "environment", issues) else {
        return environment;
    };
    for (key, value) in obj.map {
        let path = obj.field_path(key);
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            issues.push(&path, "is not a valid environment variable name");
            continue;
        }
        match value {
            Value::String(s) if s.contains('\0') => {
                issues.push(&path, "must not contain a NUL character");
            }
            Value::String(s) => environment.push((key.clone(), s.clone())),
            other => issues.push(
                &path,
                format!(
                    "expected a string (quote numbers: \"4\"), got {}",
                    describe_value(other)
                ),
            ),
        }
    }
    environment
}

/// The reference variables are dataref's to set: the manifest must not set them too.
fn check_environment_conflicts(
    environment: &[(String, String)],
    references: &[Reference],
    issues: &mut Issues,
) {
    for reference in references {
        for var in [reference.variable(), reference.mode_variable()] {
            if environment.iter().any(|(k, _)| *k == var) {
                issues.push(
                    format!("environment.{var}"),
                    format!(
                        "is set by dataref for reference {:?}; remove it",
                        reference.name
                    ),
                );
            }
        }
    }
}

/// Every secret a job needs must be readable, with safe permissions, before anything starts.
fn check_secrets(
    references: &[Reference],
    inline: &BTreeMap<String, DatastoreSpec>,
    issues: &mut Issues,
) {
    let mut checked: Vec<&str> = Vec::new();
    for reference in references {
        if checked.contains(&reference.datastore_name.as_str()) {
            continue;
        }
        checked.push(&reference.datastore_name);
        let Some(secret) = reference
            .datastore
            .credential()
            .and_then(|c| c.secret_ref())
        else {
            continue;
        };
        if let Err(e) = secret.read() {
            let field = match reference.datastore.credential() {
                Some(crate::model::Credential::SasToken(_)) => "sas_token",
                _ => "account_key",
            };
            let path = if inline.contains_key(&reference.datastore_name) {
                format!("datastores.{}.{field}", reference.datastore_name)
            } else {
                format!("datastores.{}.{field} (registry)", reference.datastore_name)
            };
            issues.push(path, e.to_string());
        }
    }
}
