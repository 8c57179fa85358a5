//! `dataref validate JOB.json`.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::exit::{ExitCode, Failure};
use crate::manifest::{self, JobPlan, LoadError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job manifest.
    #[arg(value_name = "JOB.json")]
    pub manifest: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config_dir: &Path, args: Args) -> Result<i32, Failure> {
    // `validate` exits 0, 64, 65 or 66 (SPEC §5): a registry that cannot be read is a
    // configuration problem here, not a local I/O failure of a job.
    let registry = super::load_registry(config_dir).map_err(|f| match f.code {
        ExitCode::IoErr => Failure::new(ExitCode::DataErr, f.message),
        _ => f,
    })?;
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

/// Loads a manifest, turning its errors into the exit codes of SPEC §5 with every problem
/// listed (one per line, each starting with its JSON path).
pub(crate) fn load_plan(
    path: &Path,
    registry: &crate::datastore::registry::Registry,
) -> Result<JobPlan, Failure> {
    load_plan_with_base(path, None, registry)
}

/// `load_plan` with relative paths resolved against `base` (`run --base-dir`).
pub(crate) fn load_plan_with_base(
    path: &Path,
    base: Option<&Path>,
    registry: &crate::datastore::registry::Registry,
) -> Result<JobPlan, Failure> {
    manifest::load_with_base(path, base, registry).map_err(|e| match e {
        LoadError::Missing { path, source } => Failure::new(
            ExitCode::NoInput,
            format!("cannot read manifest {}: {source}", path.display()),
        ),
        LoadError::Invalid { path, issues } => {
            let mut message = format!(
                "{} is invalid ({} problem{}):",
                path.display(),
                issues.len(),
                if issues.len() == 1 { "" } else { "s" }
            );
            for issue in issues {
                message.push_str(&format!("\n  {issue}"));
            }
            Failure::new(ExitCode::DataErr, message)
        }
    })
}

fn print_plan(plan: &JobPlan) {
    println!("manifest     {}", plan.manifest_path.display());
    println!("working_dir  {}", plan.working_dir.display());
    println!("command      {}", shell_words(&plan.command));
    println!("upload       {}", policy_name(plan));
    if plan.references.is_empty() {
        println!("references   (none)");
    }
    for r in &plan.references {
        println!();
        println!("reference {}", r.name);
        println!("  datastore  {} ({})", r.datastore_name, r.datastore);
        println!("  mode       {}", r.mode.as_str());
        println!("  remote     {}", r.path_on_datastore);
        println!("  local      {}", r.local.display());
        println!("  variable   {}", r.variable());
    }
}

fn policy_name(plan: &JobPlan) -> &'static str {
    match plan.upload_policy {
        manifest::UploadPolicy::Always => "always",
        manifest::UploadPolicy::OnSuccess => "on_success",
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
        "working_dir": plan.working_dir,
        "command": plan.command,
        "upload_policy": plan.upload_policy,
        "grace_period_seconds": plan.grace_period.as_secs(),
        "references": references,
    })
}
