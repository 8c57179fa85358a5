//! Data references: the three accepted spellings, resolution of datastores and local paths,
//! and the overlap check between references.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Datastores;
use crate::model::datastore::DatastoreSpec;
use crate::model::issues::{Issues, Object, did_you_mean, type_name};
use crate::model::{ObjectPath, OutputSync, SyncMode, Verify, resolve_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Mount,
    Download,
    Upload,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mount => "mount",
            Mode::Download => "download",
            Mode::Upload => "upload",
        }
    }

    pub fn is_input(self) -> bool {
        !matches!(self, Mode::Upload)
    }
}

/// One validated data reference.
#[derive(Debug, Clone)]
pub struct Reference {
    pub name: String,
    pub datastore_name: String,
    pub datastore: DatastoreSpec,
    pub mode: Mode,
    pub path_on_datastore: ObjectPath,
    pub path_on_compute: Option<String>,
    pub overwrite: bool,
    pub allow_empty: bool,
    /// This reference's own `verify`; `None` = the job's.
    pub verify: Option<Verify>,
    /// Where the data appears (mount, download) or is taken from (upload); absolute.
    pub local: PathBuf,
    /// An upload whose `local` is a folder dataref creates before the script starts (an Azure
    /// ML v2 `uri_folder` output); otherwise only `local`'s parent is created.
    pub create_dir: bool,
    /// An upload whose folder is first filled with what is already under `path_on_datastore`
    /// (a preempted job resumes from its last checkpoint).
    pub restore: bool,
    /// When an upload's files are sent, and how fast.
    pub sync: OutputSync,
}

/// Reference names become part of `AZUREML_DATAREFERENCE_<name>`, so any non-empty
/// `[A-Za-z0-9_]+` is a valid variable name (the v1 SDK names `ds.path()` references with
/// `uuid4().hex`, which often starts with a digit).
pub fn is_reference_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Reference {
    /// `AZUREML_DATAREFERENCE_<name>`.
    pub fn variable(&self) -> String {
        format!("AZUREML_DATAREFERENCE_{}", self.name)
    }

    /// `AZURE_ML_INPUT_<name>` or `AZURE_ML_OUTPUT_<name>`.
    pub fn mode_variable(&self) -> String {
        match self.mode {
            Mode::Upload => format!("AZURE_ML_OUTPUT_{}", self.name),
            _ => format!("AZURE_ML_INPUT_{}", self.name),
        }
    }
}

/// The field names of one spelling, in a fixed order: datastore, path on datastore, mode,
/// path on compute, overwrite, allow empty.
struct Spelling {
    name: &'static str,
    fields: [&'static str; 6],
}

const SNAKE: Spelling = Spelling {
    name: "snake_case",
    fields: [
        "datastore",
        "path_on_datastore",
        "mode",
        "path_on_compute",
        "overwrite",
        "allow_empty",
    ],
};
const CAMEL: Spelling = Spelling {
    name: "camelCase (Azure ML run configuration)",
    fields: [
        "dataStoreName",
        "pathOnDataStore",
        "mode",
        "pathOnCompute",
        "overwrite",
        "allowEmpty",
    ],
};
const PASCAL: Spelling = Spelling {
    name: "PascalCase (Azure ML node runtime)",
    fields: [
        "DataStoreName",
        "PathOnDataStore",
        "Mode",
        "PathOnCompute",
        "Overwrite",
        "AllowEmpty",
    ],
};
const SPELLINGS: [&Spelling; 3] = [&SNAKE, &CAMEL, &PASCAL];

/// Which spelling an entry uses, judged by the fields unique to one spelling.
fn detect_spelling(obj: &Object<'_>, issues: &mut Issues) -> &'static Spelling {
    let unique_to = |spelling: &Spelling| {
        obj.map.keys().any(|key| {
            spelling.fields.contains(&key.as_str())
                && !SPELLINGS
                    .iter()
                    .filter(|other| other.name != spelling.name)
                    .any(|other| other.fields.contains(&key.as_str()))
        })
    };
    let used: Vec<&'static Spelling> = SPELLINGS.into_iter().filter(|s| unique_to(s)).collect();
    if used.len() > 1 {
        let names: Vec<&str> = used.iter().map(|s| s.name).collect();
        issues.push(
            &obj.path,
            format!(
                "mixes field spellings ({}); use one spelling per entry",
                names.join(" and ")
            ),
        );
    }
    used.first().copied().unwrap_or(&SNAKE)
}

pub(super) fn parse_all(
    top: &Object<'_>,
    datastores: &Datastores<'_>,
    working_dir: Option<&Path>,
    issues: &mut Issues,
) -> Vec<Reference> {
    let key = match (top.get("data_references"), top.get("dataReferences")) {
        (Some(_), Some(_)) => {
            issues.push(
                "dataReferences",
                "give data_references or dataReferences, not both",
            );
            return Vec::new();
        }
        (None, Some(_)) => "dataReferences",
        _ => "data_references",
    };
    let Some(value) = top.get(key) else {
        return Vec::new(); // a job may have no data at all
    };
    let Some(entries) = Object::new(value, key, issues) else {
        return Vec::new();
    };
    let mut references = Vec::new();
    for (name, entry) in entries.map {
        let path = entries.field_path(name);
        if !is_reference_name(name) {
            issues.push(
                &path,
                format!(
                    "{name:?} is not a valid reference name: use letters, digits and \
                     underscores (it becomes AZUREML_DATAREFERENCE_<name>)"
                ),
            );
            continue;
        }
        if let Some(reference) = parse_one(name, entry, &path, datastores, working_dir, issues) {
            references.push(reference);
        }
    }
    check_overlaps(&references, key, issues);
    references
}

fn parse_one(
    name: &str,
    value: &Value,
    path: &str,
    datastores: &Datastores<'_>,
    working_dir: Option<&Path>,
    issues: &mut Issues,
) -> Option<Reference> {
    let spelling = detect_spelling(&Object::new(value, path, issues)?, issues);
    // Azure ML writes absent fields as nulls (`"pathOnDataStore": null`): absent they are.
    let without_nulls;
    let value = match value {
        Value::Object(fields) if spelling.name != SNAKE.name => {
            without_nulls = Value::Object(
                fields
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            &without_nulls
        }
        other => other,
    };
    let obj = Object::new(value, path, issues)?;
    // `verify`, `restore` and the sync fields are dataref's own, accepted in every spelling;
    // `ForceRead` is the node runtime's (checked, and meaningless here: inputs are always read,
    // on demand or up front).
    let ours = [
        "verify",
        "restore",
        "sync",
        "commit_files",
        "max_bytes_per_second",
    ];
    let runtime: &[&str] = match spelling.name == PASCAL.name {
        true => &["ForceRead"],
        false => &[],
    };
    let known: Vec<&str> = spelling
        .fields
        .iter()
        .chain(&ours)
        .chain(runtime)
        .copied()
        .collect();
    obj.reject_unknown(&known, issues);
    if spelling.name == PASCAL.name {
        obj.bool("ForceRead", issues);
    }
    let verify = Verify::parse(&obj, issues);
    let [f_store, f_remote, f_mode, f_local, f_overwrite, f_empty] = spelling.fields;

    let mode = match obj.get(f_mode) {
        None => Some(Mode::Mount),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "mount" => Some(Mode::Mount),
            "download" => Some(Mode::Download),
            "upload" => Some(Mode::Upload),
            _ => {
                issues.push(
                    obj.field_path(f_mode),
                    format!("expected \"mount\", \"download\" or \"upload\", got {s:?}"),
                );
                None
            }
        },
        Some(other) => {
            issues.push(
                obj.field_path(f_mode),
                format!(
                    "expected \"mount\", \"download\" or \"upload\", got {}",
                    type_name(other)
                ),
            );
            None
        }
    };

    let datastore = resolve_datastore(&obj, f_store, datastores, issues);

    let remote = match obj.string(f_remote, issues) {
        Some(text) => match ObjectPath::normalize(text) {
            Ok(p) => Some(p),
            Err(e) => {
                issues.push(obj.field_path(f_remote), format!("{text:?} {e}"));
                None
            }
        },
        None if obj.get(f_remote).is_some() => None,
        None => Some(ObjectPath::root()),
    };

    let path_on_compute = obj.string(f_local, issues).map(str::to_owned);
    if matches!(&path_on_compute, Some(p) if p.contains('\0')) {
        issues.push(obj.field_path(f_local), "must not contain a NUL character");
        return None;
    }
    let missing_upload_source =
        mode == Some(Mode::Upload) && path_on_compute.as_deref().is_none_or(str::is_empty);
    if missing_upload_source {
        issues.push(
            obj.field_path(f_local),
            "required for mode \"upload\": the file or directory the script writes",
        );
    }
    let overwrite = obj.bool(f_overwrite, issues).unwrap_or(false);
    let allow_empty = obj.bool(f_empty, issues).unwrap_or(false);
    let restore = obj.bool("restore", issues).unwrap_or(false);
    if restore && mode.is_some_and(Mode::is_input) {
        issues.push(
            obj.field_path("restore"),
            "only for mode \"upload\": it fills the folder the script writes with what is \
             already stored",
        );
    }

    let sync = parse_sync(&obj, mode, issues);
    // Continuous upload sends a file again each time it is rewritten: it must replace.
    let overwrite = match (sync.mode == SyncMode::Continuous, obj.get(f_overwrite)) {
        (true, Some(Value::Bool(false))) => {
            issues.push(
                obj.field_path(f_overwrite),
                "\"sync\": \"continuous\" replaces objects as their files are written again; \
                 leave overwrite out or set it to true",
            );
            overwrite
        }
        (true, _) => true,
        (false, _) => overwrite,
    };

    if missing_upload_source {
        return None; // no local path: nothing to compare with other references
    }
    let (mode, (datastore_name, datastore), remote, working_dir) =
        (mode?, datastore?, remote?, working_dir?);
    let local = local_path(
        mode,
        working_dir,
        &datastore_name,
        path_on_compute.as_deref(),
        &remote,
    )?;
    Some(Reference {
        name: name.to_owned(),
        datastore_name,
        datastore,
        mode,
        path_on_datastore: remote,
        path_on_compute,
        overwrite,
        allow_empty,
        verify,
        local,
        // A folder synced while the script runs is watched from before it starts.
        create_dir: sync.mode == SyncMode::Continuous,
        restore,
        sync,
    })
}

/// `sync`, `commit_files` and `max_bytes_per_second`: upload references only.
fn parse_sync(obj: &Object<'_>, mode: Option<Mode>, issues: &mut Issues) -> OutputSync {
    let mut sync = OutputSync::default();
    let upload_only = |field: &str, issues: &mut Issues| {
        if mode.is_some_and(Mode::is_input) && obj.get(field).is_some() {
            issues.push(obj.field_path(field), "only for mode \"upload\"");
        }
    };
    for field in ["sync", "commit_files", "max_bytes_per_second"] {
        upload_only(field, issues);
    }
    match obj.string("sync", issues) {
        None | Some("on_exit") => {}
        Some("continuous") => sync.mode = SyncMode::Continuous,
        Some(other) => issues.push(
            obj.field_path("sync"),
            format!("expected \"on_exit\" or \"continuous\", got {other:?}"),
        ),
    }
    if let Some(value) = obj.get("commit_files") {
        let field = obj.field_path("commit_files");
        match value.as_array() {
            Some(globs) => {
                for (i, glob) in globs.iter().enumerate() {
                    match glob.as_str().map(|g| (g, globset::Glob::new(g))) {
                        Some((text, Ok(_))) => sync.commit_files.push(text.to_owned()),
                        Some((_, Err(e))) => issues.push(format!("{field}[{i}]"), e.to_string()),
                        None => issues.push(
                            format!("{field}[{i}]"),
                            format!("expected a glob string, got {}", type_name(glob)),
                        ),
                    }
                }
                if sync.mode != SyncMode::Continuous {
                    issues.push(field, "only with \"sync\": \"continuous\"");
                }
            }
            None => issues.push(
                field,
                format!("expected a list of globs, got {}", type_name(value)),
            ),
        }
    }
    if let Some(rate) = obj.u64("max_bytes_per_second", issues) {
        match rate {
            0 => issues.push(
                obj.field_path("max_bytes_per_second"),
                "must be at least 1 (leave it out for no bound)",
            ),
            rate => sync.max_bytes_per_second = Some(rate),
        }
    }
    sync
}

fn resolve_datastore(
    obj: &Object<'_>,
    field: &str,
    datastores: &Datastores<'_>,
    issues: &mut Issues,
) -> Option<(String, DatastoreSpec)> {
    let path = obj.field_path(field);
    let name = match obj.string(field, issues) {
        Some(name) => name.to_owned(),
        None if obj.get(field).is_some() => return None,
        None => match datastores.default_name() {
            Some(default) => default.to_owned(),
            None => {
                issues.push(
                    path,
                    "required: no datastore named and the registry has no default \
                     (dataref datastore set-default NAME)",
                );
                return None;
            }
        },
    };
    if datastores.is_broken(&name) {
        // The definition's own problems are already reported under `datastores.<name>`.
        return None;
    }
    match datastores.get(&name) {
        Some(spec) => Some((name, spec.clone())),
        None => {
            let known = datastores.names();
            let hint = match did_you_mean(&name, &known) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None if known.is_empty() => {
                    "; none is defined in the manifest's datastores or the registry".to_owned()
                }
                None => format!("; known: {}", known.join(", ")),
            };
            issues.push(path, format!("unknown datastore {name:?}{hint}"));
            None
        }
    }
}

/// `root` = `path_on_compute` if absolute, else
/// `<working_dir>/<datastore>/<path_on_compute>`; `local` = `root/<path_on_datastore>`. An
/// upload's `local` is `path_on_compute` itself.
fn local_path(
    mode: Mode,
    working_dir: &Path,
    datastore_name: &str,
    path_on_compute: Option<&str>,
    remote: &ObjectPath,
) -> Option<PathBuf> {
    match mode {
        Mode::Upload => Some(resolve_path(working_dir, path_on_compute?)),
        Mode::Mount | Mode::Download => {
            let root = match path_on_compute {
                Some(p) if Path::new(p).is_absolute() => resolve_path(Path::new("/"), p),
                other => resolve_path(&working_dir.join(datastore_name), other.unwrap_or_default()),
            };
            Some(remote.to_local(&root))
        }
    }
}

/// No two references may share or nest their local paths: a mount would hide a download, an
/// upload would pick up an input.
pub(super) fn check_overlaps(references: &[Reference], key: &str, issues: &mut Issues) {
    // A local datastore's own directory must not overlap where its data appears: a download
    // would copy files onto themselves, an upload would copy a folder into itself.
    for reference in references {
        let DatastoreSpec::Local { root } = &reference.datastore else {
            continue;
        };
        let source = reference.path_on_datastore.to_local(root);
        if source.starts_with(&reference.local) || reference.local.starts_with(&source) {
            let field = if reference.path_on_compute.is_some() {
                "path_on_compute"
            } else {
                "path_on_datastore"
            };
            issues.push(
                format!("{key}.{}.{field}", reference.name),
                format!(
                    "local path {} overlaps the datastore's own directory {}; \
                     choose a path_on_compute outside it",
                    reference.local.display(),
                    source.display()
                ),
            );
        }
    }
    for (i, later) in references.iter().enumerate() {
        for earlier in &references[..i] {
            let relation = if later.local == earlier.local {
                "is the same as"
            } else if later.local.starts_with(&earlier.local) {
                "is inside"
            } else if earlier.local.starts_with(&later.local) {
                "contains"
            } else {
                continue;
            };
            let field = if later.path_on_compute.is_some() {
                "path_on_compute"
            } else {
                "path_on_datastore"
            };
            issues.push(
                format!("{key}.{}.{field}", later.name),
                format!(
                    "local path {} {relation} the local path of reference {:?} ({}); \
                     give the references separate path_on_compute directories",
                    later.local.display(),
                    earlier.name,
                    earlier.local.display()
                ),
            );
        }
    }
}
