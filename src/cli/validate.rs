//! `dataref validate JOB.json`.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::exit::CliError;
use crate::manifest::{self, JobPlan};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job: dataref's manifest (JSON or YAML), an Azure ML v1 run configuration (JSON,
    /// submission body or .runconfig YAML) or an Azure ML v2 command-job YAML, told apart by
    /// content.
    #[arg(value_name = "JOB")]
    pub manifest: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config_dir: &Path, args: Args) -> Result<i32, CliError> {
    // `validate` exits 0, 64, 65 or 66.
    let registry =
        crate::registry::Registry::load(config_dir).map_err(CliError::RegistryForValidation)?;
    let plan = load_plan(&args.manifest, &registry)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan_json(&plan)).expect("JSON encodes")
        );
    } else {
        print_plan(&plan);
    }
    Ok(0)
}

/// Loads a manifest with every problem listed (one per line, each starting with its JSON path).
pub(crate) fn load_plan(
    path: &Path,
    registry: &crate::registry::Registry,
) -> Result<JobPlan, CliError> {
    load_plan_with_base(path, None, registry)
}

/// `load_plan` with relative paths resolved against `base` (`run --base-dir`).
pub(crate) fn load_plan_with_base(
    path: &Path,
    base: Option<&Path>,
    registry: &crate::registry::Registry,
) -> Result<JobPlan, CliError> {
    Ok(manifest::load_with_base(path, base, registry)?)
}

fn print_plan(plan: &JobPlan) {
    println!(
        "manifest     {} ({})",
        plan.manifest_path.display(),
        plan.dialect.describe()
    );
    println!("working_dir  {}", plan.working_dir.display());
    println!("command      {}", shell_words(&plan.command));
    println!("upload       {}", policy_name(plan));
    for note in &plan.notes {
        println!("note         {note}");
    }
    if plan.references.is_empty() {
        println!("references   (none)");
    }
    for r in &plan.references {
        println!();
        println!("reference {}", r.name);
        println!("  datastore  {} ({})", r.datastore_name, r.datastore);
        println!("  mode       {}", r.mode.as_str());
        if r.sync.mode == crate::model::SyncMode::Continuous {
            println!("  sync       continuous");
        }
        println!("  remote     {}", r.path_on_datastore);
        println!("  local      {}", r.local.display());
        println!("  variable   {}", r.variable());
    }
}

fn policy_name(plan: &JobPlan) -> &'static str {
    match plan.upload_policy {
        crate::model::UploadPolicy::Always => "always",
        crate::model::UploadPolicy::OnSuccess => "on_success",
    }
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:$%+,@{}".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn plan_json(plan: &JobPlan) -> serde_json::Value {
    let references: Vec<_> = plan
        .references
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "datastore": r.datastore_name,
                "datastore_kind": r.datastore.kind(),
                "mode": r.mode,
                "path_on_datastore": r.path_on_datastore.as_str(),
                "local": r.local,
                "variable": r.variable(),
                "overwrite": r.overwrite,
            })
        })
        .collect();
    json!({
        "manifest": plan.manifest_path,
        "dialect": plan.dialect,
        "notes": plan.notes,
        "working_dir": plan.working_dir,
        "command": plan.command,
        "upload_policy": plan.upload_policy,
        "verify": plan.verify,
        "grace_period_seconds": plan.grace_period.as_secs(),
        "references": references,
    })
}
