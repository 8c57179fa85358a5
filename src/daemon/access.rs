//! What a non-root peer may ask of a root daemon. The daemon reads secrets and writes
//! downloads as root, so a job submitted by a user must not make it read or write anything that
//! user could not: secrets must be files the user owns (or the registry's own keys), never
//! variables of the daemon's environment, and every local path must lie in a place the user owns.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::manifest::JobPlan;
use crate::model::SecretRef;
use crate::model::issues::Issue;
use crate::model::settings::DEFAULT_RESERVED_FREE_DISK;

/// The reasons `plan` may not run for the non-root user `uid`; empty when it may.
pub fn check_non_root(plan: &JobPlan, uid: u32, config_dir: &Path) -> Vec<Issue> {
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
    let keys_dir = config_dir.join("keys");
    for r in &plan.references {
        let field = format!("data_references.{}", r.name);
        let from_registry = !plan.inline_datastores.contains(&r.datastore_name);
        // The node's identity is the administrator's to grant, through the registry; an inline
        // datastore would lend it to anyone who can submit.
        if !from_registry
            && matches!(
                r.datastore.credential(),
                Some(crate::model::Credential::ManagedIdentity { .. })
            )
        {
            issues.push(Issue {
                path: field.clone(),
                message: format!(
                    "datastore {:?} would use the node's managed identity; jobs submitted by a \
                     non-root user may use it only through a registered datastore",
                    r.datastore_name
                ),
            });
        }
        match r.datastore.credential().and_then(|c| c.secret_ref()) {
            Some(SecretRef::Env(var)) => issues.push(Issue {
                path: field.clone(),
                message: format!(
                    "datastore {:?} takes its secret from the variable {var}; jobs submitted \
                     by a non-root user may only use secret files they own",
                    r.datastore_name
                ),
            }),
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
            None => {}
        }
        if let Some(problem) = place_problem(&r.local, uid) {
            issues.push(Issue {
                path: field,
                message: problem,
            });
        }
    }
    issues
}

fn owner(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.uid())
}

/// A local path is acceptable when it exists and is the user's, or when the nearest existing
/// ancestor (symlinks resolved) is the user's: dataref creates the rest and gives it to them.
fn place_problem(local: &Path, uid: u32) -> Option<String> {
    let existing = local.ancestors().find(|a| a.exists())?;
    let real = existing.canonicalize().ok()?;
    match owner(&real) {
        Some(owner) if owner == uid => None,
        _ => Some(format!(
            "{} is not owned by uid {uid}: a job submitted by a non-root user may only use \
             local paths inside directories that user owns",
            real.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_must_belong_to_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let mine = dir.path().join("new/deeper");
        assert_eq!(place_problem(&mine, me), None);
        let problem = place_problem(&mine, me + 1).unwrap();
        assert!(problem.contains("not owned by uid"), "{problem}");
        // A symlink the user owns does not lend them its target.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        if me != 0 {
            assert!(place_problem(&link.join("etc/x"), me).is_some());
        } else {
            assert!(place_problem(&link.join("proc/x"), 4242).is_some());
        }
    }
}
