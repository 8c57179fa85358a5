//! The data URIs of Azure ML v2 jobs, resolved to a datastore and a path in it.
//!
//! `azureml://datastores/<name>/paths/<p>` (and the long `azureml://subscriptions/…` form) name
//! a registry datastore. `https://<account>.blob.core.windows.net/<container>/<p>` and
//! `wasbs://<container>@<account>.blob.core.windows.net/<p>` name the registry datastore with
//! that account and container, or else are read anonymously (a public container). A local path
//! is read or written as a local datastore.

use std::path::Path;

use percent_encoding::percent_decode_str;

use crate::model::issues::Issues;
use crate::model::{AzureLocation, Credential, DatastoreSpec, ObjectPath, resolve_path};
use crate::registry::Registry;

/// Where a URI's data lives.
#[derive(Debug)]
pub(super) enum Located {
    /// A datastore the administrator registered.
    Registry { name: String, spec: DatastoreSpec },
    /// A datastore made for this job from the URI alone.
    Inline { name: String, spec: DatastoreSpec },
}

/// Which Azure Storage service a host names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    Blob,
    File,
}

/// Resolves `uri`; `inline_name` names the datastore made when no registered one fits.
pub(super) fn locate(
    uri: &str,
    field: &str,
    inline_name: &str,
    base: &Path,
    registry: &Registry,
    issues: &mut Issues,
) -> Option<(Located, ObjectPath)> {
    // The SDK's own dump writes plain https paths as `azureml:https://…`.
    let uri = match uri.strip_prefix("azureml:") {
        Some(rest) if rest.starts_with("https://") || rest.starts_with("http://") => rest,
        _ => uri,
    };
    let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let result = match scheme.as_deref() {
        Some("azureml") => azureml(uri, registry),
        Some("https" | "http") => https(uri, inline_name, registry),
        Some("wasbs" | "wasb") => wasbs(uri, inline_name, registry),
        Some("file") => local(uri.trim_start_matches("file://"), inline_name, base),
        Some(other) => Err(format!(
            "{other}:// paths are not supported; use azureml://datastores/<name>/paths/<path>, \
             an https or wasbs blob URL, or a local path"
        )),
        None if uri.starts_with("azureml:") => Err(
            "data assets (azureml:<name>:<version>) are resolved by the Azure ML service; give \
             a datastore path: azureml://datastores/<name>/paths/<path>"
                .into(),
        ),
        None => local(uri, inline_name, base),
    };
    match result {
        Ok(found) => Some(found),
        Err(message) => {
            issues.push(field, message);
            None
        }
    }
}

type Found = Result<(Located, ObjectPath), String>;

fn object_path(segments: &[&str]) -> Result<ObjectPath, String> {
    let decoded: Vec<String> = segments
        .iter()
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let joined = decoded.join("/");
    ObjectPath::normalize(&joined).map_err(|e| format!("path {joined:?} {e}"))
}

fn azureml(uri: &str, registry: &Registry) -> Found {
    let expected = "expected azureml://datastores/<name>/paths/<path>";
    let rest = &uri["azureml://".len()..];
    let segments: Vec<&str> = rest.split('/').collect();
    let at = segments
        .iter()
        .position(|s| s.eq_ignore_ascii_case("datastores"))
        .ok_or_else(|| format!("{expected} (data assets are the Azure ML service's to resolve)"))?;
    let (Some(name), Some(paths)) = (segments.get(at + 1), segments.get(at + 2)) else {
        return Err(expected.into());
    };
    if !paths.eq_ignore_ascii_case("paths") || name.is_empty() {
        return Err(expected.into());
    }
    let path = object_path(&segments[at + 3..])?;
    match registry.datastores.get(*name) {
        Some(spec) => Ok((
            Located::Registry {
                name: (*name).to_owned(),
                spec: spec.clone(),
            },
            path,
        )),
        None => {
            let known: Vec<&str> = registry.datastores.keys().map(String::as_str).collect();
            Err(format!(
                "unknown datastore {name:?}: register it on this node (dataref datastore \
                 register …){}",
                match known.is_empty() {
                    true => String::new(),
                    false => format!("; known: {}", known.join(", ")),
                }
            ))
        }
    }
}

fn https(uri: &str, inline_name: &str, registry: &Registry) -> Found {
    let url = url::Url::parse(uri).map_err(|e| format!("not a valid URL: {e}"))?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
    let origin = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let path_style = url
        .host()
        .is_some_and(|h| !matches!(h, url::Host::Domain(_)))
        || host == "localhost";
    if path_style {
        // An emulator (Azurite): http://127.0.0.1:10000/<account>/<container>/<path>.
        let (Some(account), Some(container)) = (segments.first(), segments.get(1)) else {
            return Err("expected http://<host>:<port>/<account>/<container>/<path>".into());
        };
        let endpoint = format!("{origin}/{account}");
        let path = object_path(&segments[2..])?;
        let at = Container {
            service: Service::Blob,
            account,
            container,
            endpoint: Some(endpoint),
        };
        return azure(at, path, inline_name, registry);
    }
    let Some((account, service, suffix)) = split_host(&host) else {
        return Err(format!(
            "{host} is not an Azure Storage host (<account>.blob.core.windows.net)"
        ));
    };
    let Some(container) = segments.first().filter(|c| !c.is_empty()) else {
        return Err("the URL names no container".into());
    };
    let endpoint = (suffix != "core.windows.net").then(|| origin.clone());
    let path = object_path(&segments[1..])?;
    let at = Container {
        service,
        account,
        container,
        endpoint,
    };
    azure(at, path, inline_name, registry)
}

fn wasbs(uri: &str, inline_name: &str, registry: &Registry) -> Found {
    let expected = "expected wasbs://<container>@<account>.blob.core.windows.net/<path>";
    let (scheme, rest) = uri.split_once("://").ok_or(expected)?;
    let (container, rest) = rest.split_once('@').ok_or(expected)?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.to_ascii_lowercase();
    let (account, service, suffix) = split_host(&host).ok_or(expected)?;
    if service != Service::Blob {
        return Err(expected.into());
    }
    let endpoint = (suffix != "core.windows.net").then(|| {
        let scheme = if scheme.eq_ignore_ascii_case("wasb") {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    });
    let segments: Vec<&str> = path.split('/').collect();
    let path = object_path(&segments)?;
    let at = Container {
        service: Service::Blob,
        account,
        container,
        endpoint,
    };
    azure(at, path, inline_name, registry)
}

/// `<account>.<blob|dfs|file>.<suffix>`.
fn split_host(host: &str) -> Option<(&str, Service, &str)> {
    let (account, rest) = host.split_once('.')?;
    let (service, suffix) = rest.split_once('.')?;
    let service = match service {
        "blob" | "dfs" => Service::Blob,
        "file" => Service::File,
        _ => return None,
    };
    (!account.is_empty()).then_some((account, service, suffix))
}

/// A container or share a URL names.
struct Container<'a> {
    service: Service,
    account: &'a str,
    container: &'a str,
    /// The service URL when it is not Azure's public one.
    endpoint: Option<String>,
}

fn azure(at: Container<'_>, path: ObjectPath, inline_name: &str, registry: &Registry) -> Found {
    let Container {
        service,
        account,
        container,
        endpoint,
    } = at;
    let registered = registry
        .datastores
        .iter()
        .find(|(_, spec)| match (service, spec) {
            (Service::Blob, DatastoreSpec::AzureBlob(loc))
            | (Service::File, DatastoreSpec::AzureFile(loc)) => {
                loc.account_name.eq_ignore_ascii_case(account) && loc.container == container
            }
            _ => false,
        });
    if let Some((name, spec)) = registered {
        let located = Located::Registry {
            name: name.clone(),
            spec: spec.clone(),
        };
        return Ok((located, path));
    }
    if service == Service::File {
        return Err(format!(
            "no registered azure_file datastore holds account {account:?} share {container:?}, \
             and a file share cannot be read anonymously; register one (dataref datastore \
             register azure-file …)"
        ));
    }
    // No datastore of the node's: only a public container can be read.
    let spec = DatastoreSpec::AzureBlob(AzureLocation {
        account_name: account.to_owned(),
        container: container.to_owned(),
        endpoint,
        credential: Credential::Anonymous,
    });
    let located = Located::Inline {
        name: inline_name.to_owned(),
        spec,
    };
    Ok((located, path))
}

/// A local path: the datastore is its parent directory, the path its last segment.
fn local(path: &str, inline_name: &str, base: &Path) -> Found {
    let full = resolve_path(base, path);
    let (Some(parent), Some(name)) = (full.parent(), full.file_name()) else {
        return Err(format!(
            "{} cannot be used as data: name a folder or file under it",
            full.display()
        ));
    };
    if !parent.is_dir() {
        return Err(format!("{} is not an existing directory", parent.display()));
    }
    let path = ObjectPath::normalize(&name.to_string_lossy()).map_err(|e| e.to_string())?;
    let spec = DatastoreSpec::Local {
        root: parent.to_path_buf(),
    };
    let located = Located::Inline {
        name: inline_name.to_owned(),
        spec,
    };
    Ok((located, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let blob = |account: &str, container: &str| {
            DatastoreSpec::AzureBlob(AzureLocation {
                account_name: account.into(),
                container: container.into(),
                endpoint: None,
                credential: Credential::Anonymous,
            })
        };
        let mut registry = Registry::default();
        registry
            .datastores
            .insert("workspaceblobstore".into(), blob("acct", "data"));
        registry
            .datastores
            .insert("other".into(), blob("acct", "models"));
        registry
    }

    fn found(uri: &str) -> (String, bool, String) {
        let mut issues = Issues::default();
        let (located, path) = locate(
            uri,
            "p",
            "inputs_x",
            Path::new("/tmp"),
            &registry(),
            &mut issues,
        )
        .unwrap_or_else(|| panic!("{uri}: {:?}", issues.0));
        let (name, inline) = match located {
            Located::Registry { name, .. } => (name, false),
            Located::Inline { name, .. } => (name, true),
        };
        (name, inline, path.as_str().to_owned())
    }

    fn refused(uri: &str) -> String {
        let mut issues = Issues::default();
        assert!(locate(uri, "p", "x", Path::new("/tmp"), &registry(), &mut issues).is_none());
        issues.0[0].message.clone()
    }

    #[test]
    fn every_spelling_of_a_registered_container_finds_it() {
        let want = (
            "workspaceblobstore".to_owned(),
            false,
            "mnist/train".to_owned(),
        );
        for uri in [
            "azureml://datastores/workspaceblobstore/paths/mnist/train/",
            "azureml://subscriptions/s/resourcegroups/rg/workspaces/w/datastores/workspaceblobstore/paths/mnist/train",
            "https://acct.blob.core.windows.net/data/mnist/train",
            "azureml:https://acct.blob.core.windows.net/data/mnist/train",
            "wasbs://data@acct.blob.core.windows.net/mnist/train",
        ] {
            assert_eq!(found(uri), want, "{uri}");
        }
        assert_eq!(
            found("https://ACCT.blob.core.windows.net/models/a%20b").2,
            "a b"
        );
    }

    #[test]
    fn an_unregistered_container_is_read_anonymously() {
        assert_eq!(
            found("https://public.blob.core.windows.net/open/x.csv"),
            ("inputs_x".to_owned(), true, "x.csv".to_owned())
        );
        let mut issues = Issues::default();
        let (located, _) = locate(
            "http://127.0.0.1:10000/devstoreaccount1/c/p",
            "p",
            "n",
            Path::new("/"),
            &registry(),
            &mut issues,
        )
        .unwrap();
        let Located::Inline {
            spec: DatastoreSpec::AzureBlob(loc),
            ..
        } = located
        else {
            panic!("{located:?}");
        };
        assert_eq!(
            loc.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert_eq!(
            (loc.account_name.as_str(), loc.container.as_str()),
            ("devstoreaccount1", "c")
        );
    }

    #[test]
    fn what_cannot_be_read_is_refused_with_a_reason() {
        assert!(refused("azureml://datastores/nope/paths/x").contains("known: other"));
        assert!(refused("azureml:mnist:1").contains("data assets"));
        assert!(
            refused("azureml://locations/l/workspaces/w/data/d/versions/1").contains("data assets")
        );
        assert!(refused("abfss://c@a.dfs.core.windows.net/x").contains("not supported"));
        assert!(refused("https://acct.file.core.windows.net/share/x").contains("file share"));
        assert!(refused("https://example.com/x").contains("not an Azure Storage host"));
        assert!(refused("azureml://datastores/workspaceblobstore/paths/../x").contains(".."));
    }
}
