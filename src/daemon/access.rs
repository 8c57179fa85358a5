//! What a non-root peer may ask of a root daemon, checked at submit for a clear early answer
//! (403 and an audit line): secrets must be files the user owns (or the registry's own keys),
//! never variables of the daemon's environment, and what is the service's (the cache's place,
//! the free-space floor, the node's identity) stays the service's. None of this is what makes
//! acting for the user safe: the user's files are touched with the user's rights (`localfs`),
//! whatever they swap after these checks.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::manifest::JobPlan;
use crate::model::SecretRef;
use crate::model::issues::Issue;
use crate::model::settings::DEFAULT_RESERVED_FREE_DISK;

/// The reasons `plan` may not run for the non-root user `uid`; empty when it may.
pub fn check_non_root(plan: &JobPlan, uid: u32, config_dir: &Path) -> Vec<Issue> {
    let mut issues = services_own(plan);
    let keys_dir = config_dir.join("keys");
    for r in &plan.references {
        let field = format!("data_references.{}", r.name);
        let from_registry = !plan.inline_datastores.contains(&r.datastore_name);
        match r.datastore.credential().and_then(|c| c.secret_ref()) {
            // The daemon's environment is not the user's, registry or not.
            Some(SecretRef::Env(var)) if from_registry => issues.push(env_secret(r, &field, var)),
            Some(SecretRef::File(file) | SecretRef::UserFile { path: file, .. }) => {
                let registry_key = from_registry && file.starts_with(&keys_dir);
                if !registry_key && owner(file) != Some(uid) {
                    issues.push(Issue {
                        path: field.clone(),
                        message: format!(
                            "datastore {:?}: the secret file {} is not owned by uid {uid}",
                            r.datastore_name,
                            file.display()
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    issues
}

fn env_secret(r: &crate::manifest::Reference, field: &str, var: &str) -> Issue {
    Issue {
        path: field.to_owned(),
        message: format!(
            "datastore {:?} takes its secret from the variable {var}; jobs submitted by a \
             non-root user may only use secret files they own",
            r.datastore_name
        ),
    }
}

/// What a manifest written by a user (a non-root peer's, or one run with `--run-as`) may not
/// ask for, because it is the service's: the cache's place, a lower free-space floor, the
/// node's managed identity or a secret from the agent's environment for a datastore of the
/// manifest's own.
pub fn services_own(plan: &JobPlan) -> Vec<Issue> {
    let mut issues = Vec::new();
    // The cache and the free-space floor are the service's: a user's manifest may neither
    // place the cache (root would create and delete files there) nor lower the floor (one
    // user's cache could fill the node's disk).
    if let Some(dir) = &plan.mount.cache_dir {
        issues.push(Issue {
            path: "mount.cache_dir".into(),
            message: format!(
                "{}: jobs submitted by a non-root user use the service's cache location; \
                 remove mount.cache_dir",
                dir.display()
            ),
        });
    }
    if plan.mount.reserved_free_disk_bytes < DEFAULT_RESERVED_FREE_DISK {
        issues.push(Issue {
            path: "mount.reserved_free_disk_bytes".into(),
            message: format!(
                "{} is below the service's floor of {DEFAULT_RESERVED_FREE_DISK} bytes; a \
                 non-root user's job may raise it, not lower it",
                plan.mount.reserved_free_disk_bytes
            ),
        });
    }
    for r in plan.references.iter() {
        if !plan.inline_datastores.contains(&r.datastore_name) {
            continue;
        }
        let field = format!("data_references.{}", r.name);
        // The node's identity is the administrator's to grant, through the registry; an inline
        // datastore would lend it to anyone who can submit.
        if matches!(
            r.datastore.credential(),
            Some(crate::model::Credential::ManagedIdentity { .. })
        ) {
            issues.push(Issue {
                path: field.clone(),
                message: format!(
                    "datastore {:?} would use the node's managed identity; a user's job may use \
                     it only through a registered datastore",
                    r.datastore_name
                ),
            });
        }
        if let Some(SecretRef::Env(var)) = r.datastore.credential().and_then(|c| c.secret_ref()) {
            issues.push(env_secret(r, &field, var));
        }
    }
    issues
}

fn owner(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.uid())
}
