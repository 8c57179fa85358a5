//! Azure ML v2 command jobs (the YAML users give `az ml job create --file`).
//!
//! `command` is a shell line run by `/bin/sh -c` in `code`'s directory; `${{inputs.x}}` and
//! `${{outputs.x}}` in it become the local path (shell-quoted) or the literal's value. Inputs and
//! outputs name their data by URI (`azureml://datastores/<name>/paths/<p>`, https, wasbs, or a
//! local path); each becomes a data reference with its data at
//! `<code>/.dataref/{inputs,outputs}/<name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::reference::{Mode, Reference, is_reference_name};
use super::uri::{Located, locate};
use crate::model::issues::{Issues, Object, describe_value, join};
use crate::model::{DatastoreSpec, ObjectPath, OutputSync, SyncMode, resolve_path};
use crate::registry::Registry;

/// What a command job means on the node.
pub(super) struct CommandJob {
    pub working_dir: PathBuf,
    pub command: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub references: Vec<Reference>,
    /// Datastores made for this job (anonymous https containers, local paths).
    pub inline: BTreeMap<String, DatastoreSpec>,
    pub notes: Vec<String>,
}

/// Fields that change what runs on the node.
const USED: &[&str] = &[
    "command",
    "code",
    "environment_variables",
    "inputs",
    "outputs",
    "name",
    "type",
    "distribution",
    "resources",
];

/// Where a job's inputs and outputs appear, under `code`.
const IO_DIR: &str = ".dataref";

pub(super) fn parse(
    top: &Object<'_>,
    base: &Path,
    registry: &Registry,
    issues: &mut Issues,
) -> Option<CommandJob> {
    match top.get("type") {
        None => {}
        Some(Value::String(t)) if t == "command" => {}
        Some(other) => issues.push(
            "type",
            format!(
                "only command jobs are supported (type: command), got {}",
                describe_value(other)
            ),
        ),
    }
    refuse_distribution(top, issues);
    let working_dir = code_dir(top, base, issues);
    let job_name = top
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| is_reference_name(n))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("dataref_{:012x}", crate::model::random::random_u64()));
    let mut environment = environment_variables(top, issues);
    let io = working_dir
        .as_deref()
        .map(|dir| dir.join(IO_DIR))
        .unwrap_or_default();
    let mut built = Built::default();
    let context = Context {
        base,
        registry,
        io: &io,
        job_name: &job_name,
    };
    parse_inputs(top, &context, &mut built, issues);
    parse_outputs(top, &context, &mut built, issues);
    for (name, value) in &built.literals {
        environment.push((format!("AZURE_ML_INPUT_{name}"), value.clone()));
    }
    let line = match top.get("command") {
        Some(Value::String(line)) if !line.trim().is_empty() => Some(line.as_str()),
        Some(Value::String(_)) | None => {
            issues.push("command", "required: the shell command line to run");
            None
        }
        Some(other) => {
            issues.push(
                "command",
                format!("expected a string, got {}", describe_value(other)),
            );
            None
        }
    };
    let line = line.and_then(|line| substitute_command(line, &built, issues));
    super::reference::check_overlaps(&built.references, "inputs", issues);
    let ignored: Vec<&str> = top
        .map
        .iter()
        .filter(|(k, v)| !USED.contains(&k.as_str()) && !v.is_null())
        .map(|(k, _)| k.as_str())
        .collect();
    let mut notes = built.notes;
    if !ignored.is_empty() {
        notes.insert(
            0,
            format!(
                "ignored service-side fields of the job: {}",
                ignored.join(", ")
            ),
        );
    }
    Some(CommandJob {
        working_dir: working_dir?,
        command: vec!["/bin/sh".into(), "-c".into(), line?],
        environment,
        references: built.references,
        inline: built.inline,
        notes,
    })
}

struct Context<'a> {
    base: &'a Path,
    registry: &'a Registry,
    io: &'a Path,
    job_name: &'a str,
}

#[derive(Default)]
struct Built {
    references: Vec<Reference>,
    inline: BTreeMap<String, DatastoreSpec>,
    /// Literal inputs: name → value as the command sees it.
    literals: BTreeMap<String, String>,
    /// Every input and output name, valid or not: a placeholder naming an invalid one is not
    /// reported a second time.
    declared: Vec<String>,
    notes: Vec<String>,
}

impl Built {
    fn add(
        &mut self,
        located: Located,
        reference: impl FnOnce(String, DatastoreSpec) -> Reference,
    ) {
        let (name, spec) = match located {
            Located::Registry { name, spec } => (name, spec),
            Located::Inline { name, spec } => {
                self.inline.insert(name.clone(), spec.clone());
                (name, spec)
            }
        };
        let reference = reference(name, spec);
        if let DatastoreSpec::AzureBlob(location) = &reference.datastore {
            if location.credential == crate::model::Credential::Anonymous {
                self.notes.push(format!(
                    "{}: no registered datastore holds account {:?} container {:?}; reading it \
                     anonymously, which works only for a public container (register the \
                     container with dataref datastore register to use its credentials)",
                    reference.name, location.account_name, location.container
                ));
            }
        }
        self.references.push(reference);
    }
}

fn refuse_distribution(top: &Object<'_>, issues: &mut Issues) {
    if top.get("distribution").is_some_and(|v| !v.is_null()) {
        issues.push(
            "distribution",
            "distributed jobs are not supported by dataref: it runs one process per node",
        );
    }
    let instances = top.get("resources").and_then(|r| r.get("instance_count"));
    if let Some(count) = instances.filter(|c| c.as_u64() != Some(1)) {
        issues.push(
            "resources.instance_count",
            format!(
                "dataref runs a job on one node; got {} (submit one job per node)",
                describe_value(count)
            ),
        );
    }
}

fn code_dir(top: &Object<'_>, base: &Path, issues: &mut Issues) -> Option<PathBuf> {
    let dir = match top.get("code") {
        None | Some(Value::Null) => return Some(base.to_path_buf()),
        Some(Value::String(code)) if code.starts_with("azureml:") => {
            issues.push(
                "code",
                "a registered code asset cannot be fetched by dataref; give a local directory",
            );
            return None;
        }
        Some(Value::String(code)) => resolve_path(base, code.strip_prefix("file:").unwrap_or(code)),
        Some(other) => {
            issues.push(
                "code",
                format!("expected a directory path, got {}", describe_value(other)),
            );
            return None;
        }
    };
    if !dir.is_dir() {
        issues.push(
            "code",
            format!("{} is not an existing directory", dir.display()),
        );
        return None;
    }
    Some(dir)
}

fn environment_variables(top: &Object<'_>, issues: &mut Issues) -> Vec<(String, String)> {
    let mut environment = Vec::new();
    let Some(value) = top.get("environment_variables").filter(|v| !v.is_null()) else {
        return environment;
    };
    let Some(vars) = Object::new(value, "environment_variables", issues) else {
        return environment;
    };
    for (name, value) in vars.map {
        match super::azureml_v1::scalar_text(value) {
            Some(text) if !name.is_empty() && !name.contains(['=', '\0']) => {
                environment.push((name.clone(), text));
            }
            Some(_) => issues.push(
                vars.field_path(name),
                "is not a valid environment variable name",
            ),
            None => issues.push(
                vars.field_path(name),
                format!("expected a string, got {}", describe_value(value)),
            ),
        }
    }
    environment
}

/// The `type` of a data input or output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DataType {
    Folder,
    File,
}

fn data_type(obj: &Object<'_>, issues: &mut Issues) -> Option<DataType> {
    match obj.get("type") {
        None | Some(Value::Null) => Some(DataType::Folder),
        Some(Value::String(t)) if t == "uri_folder" => Some(DataType::Folder),
        Some(Value::String(t)) if t == "uri_file" => Some(DataType::File),
        Some(other) => {
            issues.push(
                obj.field_path("type"),
                format!(
                    "expected \"uri_folder\" or \"uri_file\", got {} (mltable and model types \
                     need the Azure ML runtime)",
                    describe_value(other)
                ),
            );
            None
        }
    }
}

fn parse_inputs(top: &Object<'_>, context: &Context<'_>, built: &mut Built, issues: &mut Issues) {
    let Some(value) = top.get("inputs").filter(|v| !v.is_null()) else {
        return;
    };
    let Some(inputs) = Object::new(value, "inputs", issues) else {
        return;
    };
    for (name, value) in inputs.map {
        built.declared.push(format!("inputs.{name}"));
        let path = inputs.field_path(name);
        if !check_name(name, &path, issues) {
            continue;
        }
        if let Some(text) = super::azureml_v1::scalar_text(value) {
            built.literals.insert(name.clone(), text);
            continue;
        }
        let Some(obj) = Object::new(value, &path, issues) else {
            continue;
        };
        obj.reject_unknown(&["type", "path", "mode", "description", "optional"], issues);
        let kind = data_type(&obj, issues);
        let mode = match obj.get("mode").map(|m| (m, m.as_str())) {
            None => Some(Mode::Mount),
            Some((_, Some("ro_mount" | "mount"))) => Some(Mode::Mount),
            Some((_, Some("download"))) => Some(Mode::Download),
            Some((_, Some(other @ ("direct" | "eval_mount" | "eval_download")))) => {
                issues.push(
                    obj.field_path("mode"),
                    format!(
                        "mode {other:?} hands the URI to the Azure ML runtime, which dataref is \
                         not; use ro_mount or download"
                    ),
                );
                None
            }
            Some((other, _)) => {
                issues.push(
                    obj.field_path("mode"),
                    format!(
                        "expected \"ro_mount\", \"mount\" or \"download\" for an input, got {}",
                        describe_value(other)
                    ),
                );
                None
            }
        };
        let Some(uri) = obj.required_string("path", issues) else {
            continue;
        };
        if let (Some(kind), Some(mode)) = (kind, mode) {
            let data = Data {
                scope: "inputs",
                name,
                kind,
                mode,
                sync: SyncMode::OnExit,
            };
            add_data(built, context, &obj, data, uri, issues);
        }
    }
}

fn parse_outputs(top: &Object<'_>, context: &Context<'_>, built: &mut Built, issues: &mut Issues) {
    let Some(value) = top.get("outputs").filter(|v| !v.is_null()) else {
        return;
    };
    let Some(outputs) = Object::new(value, "outputs", issues) else {
        return;
    };
    let empty = Value::Object(Default::default());
    for (name, value) in outputs.map {
        built.declared.push(format!("outputs.{name}"));
        let path = outputs.field_path(name);
        if !check_name(name, &path, issues) {
            continue;
        }
        if built.literals.contains_key(name) || built.references.iter().any(|r| r.name == *name) {
            issues.push(
                &path,
                "an input has the same name; give outputs their own names",
            );
            continue;
        }
        let value = if value.is_null() { &empty } else { value };
        let Some(obj) = Object::new(value, &path, issues) else {
            continue;
        };
        obj.reject_unknown(
            &["type", "path", "mode", "description", "name", "version"],
            issues,
        );
        if obj.get("name").is_some() {
            built.notes.push(format!(
                "{path}: registering the output as a data asset is the service's; ignored"
            ));
        }
        let kind = data_type(&obj, issues);
        // rw_mount (the default) is Azure ML's "mounted directory" output: here the script
        // writes a local folder that is uploaded while it runs, file by file after close.
        let (mode, sync) = match obj.get("mode").map(|m| (m, m.as_str())) {
            Some((_, Some("upload"))) => (Some(Mode::Upload), SyncMode::OnExit),
            None | Some((_, Some("rw_mount"))) => match kind {
                Some(DataType::File) => {
                    built.notes.push(format!(
                        "{path}: a uri_file output in rw_mount mode is uploaded when the script \
                         ends (continuous upload watches folders)"
                    ));
                    (Some(Mode::Upload), SyncMode::OnExit)
                }
                _ => (Some(Mode::Upload), SyncMode::Continuous),
            },
            Some((other, _)) => {
                issues.push(
                    obj.field_path("mode"),
                    format!(
                        "expected \"upload\" or \"rw_mount\" for an output, got {}",
                        describe_value(other)
                    ),
                );
                (None, SyncMode::OnExit)
            }
        };
        let uri = match obj.get("path") {
            None | Some(Value::Null) => default_output_uri(context, name, &path, issues),
            Some(_) => obj
                .required_string("path", issues)
                .map(|p| p.replace("${{name}}", context.job_name)),
        };
        let Some(uri) = uri else { continue };
        if let (Some(kind), Some(mode)) = (kind, mode) {
            let data = Data {
                scope: "outputs",
                name,
                kind,
                mode,
                sync,
            };
            add_data(built, context, &obj, data, &uri, issues);
        }
    }
}

/// One data input or output, as far as it is known before its URI is resolved.
struct Data<'a> {
    /// `inputs` or `outputs`.
    scope: &'static str,
    name: &'a str,
    kind: DataType,
    mode: Mode,
    /// Outputs: when their files are sent.
    sync: SyncMode,
}

/// Resolves `uri` and adds the reference: its data appears at (or is taken from)
/// `<io>/<scope>/<name>`.
fn add_data(
    built: &mut Built,
    context: &Context<'_>,
    obj: &Object<'_>,
    data: Data<'_>,
    uri: &str,
    issues: &mut Issues,
) {
    let Data {
        scope,
        name,
        kind,
        mode,
        sync,
    } = data;
    let inline_name = format!("{scope}_{name}");
    let field = obj.field_path("path");
    let located = locate(
        uri,
        &field,
        &inline_name,
        context.base,
        context.registry,
        issues,
    );
    let Some((located, remote)) = located else {
        return;
    };
    let dir = context.io.join(scope).join(name);
    let Some(local) = data_local_path(kind, &dir, &remote, obj, issues) else {
        return;
    };
    // An upload takes a file's parent as the object's folder, and a folder output is created
    // for the script to write into.
    let output = !mode.is_input();
    let remote = match (output, kind) {
        (true, DataType::File) => remote.parent().unwrap_or_else(ObjectPath::root),
        _ => remote,
    };
    built.add(located, |datastore_name, datastore| Reference {
        name: name.to_owned(),
        datastore_name,
        datastore,
        mode,
        path_on_datastore: remote,
        path_on_compute: Some(local.display().to_string()),
        overwrite: true,
        allow_empty: false,
        verify: None,
        local,
        create_dir: output && kind == DataType::Folder,
        restore: false,
        sync: OutputSync {
            mode: sync,
            ..OutputSync::default()
        },
    });
}

/// Azure ML's default: `azureml/<job name>/<output name>` on the default datastore.
fn default_output_uri(
    context: &Context<'_>,
    name: &str,
    path: &str,
    issues: &mut Issues,
) -> Option<String> {
    match context.registry.default.as_deref() {
        Some(store) => Some(format!(
            "azureml://datastores/{store}/paths/azureml/{}/{name}/",
            context.job_name
        )),
        None => {
            issues.push(
                join(path, "path"),
                "required: the output has no path and the registry has no default datastore \
                 (dataref datastore set-default NAME)",
            );
            None
        }
    }
}

/// A folder's data appears at `dir`; a file keeps its own name inside `dir`.
fn data_local_path(
    kind: DataType,
    dir: &Path,
    remote: &ObjectPath,
    obj: &Object<'_>,
    issues: &mut Issues,
) -> Option<PathBuf> {
    match kind {
        DataType::Folder => Some(dir.to_path_buf()),
        DataType::File => match remote.file_name() {
            Some(file) => Some(dir.join(file)),
            None => {
                issues.push(
                    obj.field_path("path"),
                    "a uri_file path must name a file, not a container or folder",
                );
                None
            }
        },
    }
}

fn check_name(name: &str, path: &str, issues: &mut Issues) -> bool {
    let valid = is_reference_name(name);
    if !valid {
        issues.push(
            path,
            format!("{name:?} is not a valid name: use letters, digits and underscores"),
        );
    }
    valid
}

/// Replaces `${{inputs.x}}` / `${{outputs.x}}`; an optional block `$[[ … ]]` is kept (without
/// its brackets) when every input it names is given, and dropped otherwise.
fn substitute_command(line: &str, built: &Built, issues: &mut Issues) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut ok = true;
    while let Some(start) = rest.find("$[[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("]]") else {
            issues.push(
                "command",
                "an optional block \"$[[\" is not closed by \"]]\"",
            );
            return None;
        };
        let block = &after[..end];
        if placeholders(block).all(|(scope, name)| lookup(built, scope, name).is_some()) {
            out.push_str(block);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(start) = rest.find("${{") {
        result.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            issues.push("command", "\"${{\" is not closed by \"}}\"");
            return None;
        };
        let expression = after[..end].trim();
        match expression.split_once('.') {
            Some((scope @ ("inputs" | "outputs"), name)) => match lookup(built, scope, name) {
                Some(text) => result.push_str(&text),
                // Declared but invalid: already reported where it is declared.
                None if built.declared.iter().any(|d| d == expression) => ok = false,
                None => {
                    ok = false;
                    let known = known_names(built, scope);
                    issues.push(
                        "command",
                        format!(
                            "${{{{{expression}}}}}: no {} named {name:?} (known: {})",
                            &scope[..scope.len() - 1],
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            },
            _ => {
                ok = false;
                issues.push(
                    "command",
                    format!(
                        "${{{{{expression}}}}}: only ${{{{inputs.<name>}}}} and \
                         ${{{{outputs.<name>}}}} are known to dataref"
                    ),
                );
            }
        }
        rest = &after[end + 2..];
    }
    result.push_str(rest);
    ok.then_some(result)
}

fn placeholders(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split("${{").skip(1).filter_map(|part| {
        let expression = part.split("}}").next()?.trim();
        expression.split_once('.')
    })
}

fn lookup(built: &Built, scope: &str, name: &str) -> Option<String> {
    let want = if scope == "inputs" {
        |m: Mode| m.is_input()
    } else {
        |m: Mode| !m.is_input()
    };
    if scope == "inputs" {
        if let Some(value) = built.literals.get(name) {
            return Some(value.clone());
        }
    }
    built
        .references
        .iter()
        .find(|r| r.name == name && want(r.mode))
        .map(|r| shell_quote(&r.local.display().to_string()))
}

fn known_names(built: &Built, scope: &str) -> Vec<String> {
    let mut names: Vec<String> = built
        .references
        .iter()
        .filter(|r| r.mode.is_input() == (scope == "inputs"))
        .map(|r| r.name.clone())
        .collect();
    if scope == "inputs" {
        names.extend(built.literals.keys().cloned());
    }
    names.sort();
    names
}

/// Single quotes unless the text is made of characters no shell treats specially.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./,:=@%+".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote("/a/b_c-1.txt"), "/a/b_c-1.txt");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
