//! `dataref datastore ...`: the registry commands.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::exit::CliError;
use crate::model::datastore::{
    AzureLocation, Credential, DatastoreSpec, SecretRef, check_datastore_name,
};
use crate::model::issues::Issues;
use crate::registry::Registry;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a datastore (Datastore.register_*), from flags or from Azure ML's datastore
    /// YAML (`--file`, what `az ml datastore create --file` reads).
    Register(RegisterArgs),
    /// List registered datastores: name and kind, one per line.
    List,
    /// Show one datastore's definition (secrets appear only as references).
    Get { name: String },
    /// Make a datastore the default for references that name none.
    SetDefault { name: String },
    /// Remove a datastore from the registry (the data is untouched).
    Remove { name: String },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RegisterArgs {
    /// An Azure ML datastore YAML (`type: azure_blob | azure_file`, `name`, `account_name`,
    /// `container_name` / `file_share_name`, `endpoint`, `protocol`, `credentials`). An inline
    /// key or SAS token is moved into <config-dir>/keys/<name> (0600) and referenced.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// With --file: the name to register under, instead of the file's `name`.
    #[arg(long, value_name = "N", requires = "file")]
    name: Option<String>,
    /// With --file: replace an existing datastore of the same name.
    #[arg(long, requires = "file")]
    overwrite: bool,
    #[command(subcommand)]
    kind: Option<Box<Register>>,
}

#[derive(Debug, Subcommand)]
pub enum Register {
    /// A directory on local disk, NFS or Lustre.
    Local {
        #[command(flatten)]
        common: Common,
        /// The datastore's root directory.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
    },
    /// An Azure Blob container (Datastore.register_azure_blob_container).
    AzureBlob {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "A")]
        account: String,
        #[arg(long, value_name = "C")]
        container: String,
        #[command(flatten)]
        credential: BlobCredential,
        #[command(flatten)]
        azure: AzureOptions,
    },
    /// An Azure File share (Datastore.register_azure_file_share).
    AzureFile {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "A")]
        account: String,
        #[arg(long, value_name = "S")]
        share: String,
        #[command(flatten)]
        credential: FileCredential,
        #[command(flatten)]
        azure: AzureOptions,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// The datastore's name (letters, digits, underscores).
    #[arg(long, value_name = "N")]
    pub(super) name: String,
    /// Replace an existing datastore of the same name.
    #[arg(long)]
    pub(super) overwrite: bool,
}

#[derive(Debug, Args)]
pub struct AzureOptions {
    /// Service URL, e.g. http://127.0.0.1:10000/devstoreaccount1 for Azurite.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Create the container or share if it does not exist.
    #[arg(long)]
    create_if_not_exists: bool,
    /// With --managed-identity: the client ID of a user-assigned identity.
    #[arg(long, value_name = "ID", requires = "managed_identity")]
    client_id: Option<String>,
}

/// Secrets are taken by reference only: a file (mode 0600 or stricter) or a variable name.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct BlobCredential {
    /// File holding the account key.
    #[arg(long, value_name = "F")]
    key_file: Option<PathBuf>,
    /// Environment variable holding the account key.
    #[arg(long, value_name = "V")]
    key_env: Option<String>,
    /// File holding a SAS token.
    #[arg(long, value_name = "F")]
    sas_file: Option<PathBuf>,
    /// Environment variable holding a SAS token.
    #[arg(long, value_name = "V")]
    sas_env: Option<String>,
    /// A public container: no credential.
    #[arg(long)]
    anonymous: bool,
    /// Entra ID tokens from the node's managed identity (no key, no SAS).
    #[arg(long)]
    managed_identity: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct FileCredential {
    /// File holding the account key.
    #[arg(long, value_name = "F")]
    key_file: Option<PathBuf>,
    /// Environment variable holding the account key.
    #[arg(long, value_name = "V")]
    key_env: Option<String>,
    /// File holding a SAS token.
    #[arg(long, value_name = "F")]
    sas_file: Option<PathBuf>,
    /// Environment variable holding a SAS token.
    #[arg(long, value_name = "V")]
    sas_env: Option<String>,
    /// Entra ID tokens from the node's managed identity (no key, no SAS).
    #[arg(long)]
    managed_identity: bool,
}

pub fn run(config_dir: &Path, command: Command) -> Result<i32, CliError> {
    match command {
        Command::Register(RegisterArgs {
            kind: Some(register),
            ..
        }) => self::register(config_dir, *register),
        Command::Register(RegisterArgs {
            file: Some(file),
            name,
            overwrite,
            kind: None,
        }) => {
            let common = Common {
                name: String::new(),
                overwrite,
            };
            let (common, spec) = super::datastore_yaml::load(config_dir, &file, name, common)?;
            add(config_dir, common, spec, false)
        }
        Command::Register(_) => Err(CliError::Usage(
            "datastore register: give a kind (local, azure-blob, azure-file) with its flags, or \
             --file FILE"
                .into(),
        )),
        Command::List => {
            let registry = super::load_registry(config_dir)?;
            for (name, spec) in &registry.datastores {
                println!("{name}\t{}", spec.kind());
            }
            Ok(0)
        }
        Command::Get { name } => {
            let registry = super::load_registry(config_dir)?;
            let spec = lookup(&registry, &name)?;
            let mut json = spec.to_json();
            json["name"] = name.clone().into();
            json["default"] = (registry.default.as_deref() == Some(name.as_str())).into();
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("JSON encodes")
            );
            Ok(0)
        }
        Command::SetDefault { name } => {
            let mut registry = super::load_registry(config_dir)?;
            lookup(&registry, &name)?;
            registry.default = Some(name.clone());
            save(&registry, config_dir)?;
            eprintln!("default datastore is now {name}");
            Ok(0)
        }
        Command::Remove { name } => {
            let mut registry = super::load_registry(config_dir)?;
            lookup(&registry, &name)?;
            registry.datastores.remove(&name);
            if registry.default.as_deref() == Some(name.as_str()) {
                registry.default = None;
            }
            save(&registry, config_dir)?;
            eprintln!("removed datastore {name}");
            Ok(0)
        }
    }
}

fn lookup<'a>(registry: &'a Registry, name: &str) -> Result<&'a DatastoreSpec, CliError> {
    registry.datastores.get(name).ok_or_else(|| {
        let known: Vec<&str> = registry.datastores.keys().map(String::as_str).collect();
        let hint = match crate::model::issues::did_you_mean(name, &known) {
            Some(s) => format!("; did you mean {s:?}?"),
            None if known.is_empty() => "; the registry is empty".to_owned(),
            None => format!("; registered: {}", known.join(", ")),
        };
        CliError::UnknownDatastore {
            name: name.to_owned(),
            hint,
        }
    })
}

fn save(registry: &Registry, config_dir: &Path) -> Result<(), CliError> {
    Ok(registry.save(config_dir)?)
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path)
        .map(|p| crate::model::normalize_lexically(&p))
        .map_err(|e| CliError::local(path.display().to_string(), e))
}

fn secret_from_flags(
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    sas_file: Option<PathBuf>,
    sas_env: Option<String>,
) -> Result<Option<Credential>, CliError> {
    let credential = match (key_file, key_env, sas_file, sas_env) {
        (Some(f), ..) => Credential::AccountKey(SecretRef::File(absolute(&f)?)),
        (_, Some(v), ..) => Credential::AccountKey(SecretRef::Env(v)),
        (_, _, Some(f), _) => Credential::SasToken(SecretRef::File(absolute(&f)?)),
        (_, _, _, Some(v)) => Credential::SasToken(SecretRef::Env(v)),
        _ => return Ok(None),
    };
    Ok(Some(credential))
}

fn register(config_dir: &Path, register: Register) -> Result<i32, CliError> {
    let (common, spec, create) = match register {
        Register::Local { common, root } => {
            let root = absolute(&root)?;
            if !root.is_dir() {
                return Err(CliError::InvalidDefinition(format!(
                    "--root {}: not an existing directory",
                    root.display()
                )));
            }
            (common, DatastoreSpec::Local { root }, false)
        }
        Register::AzureBlob {
            common,
            account,
            container,
            credential: c,
            azure,
        } => {
            let credential = match secret_from_flags(c.key_file, c.key_env, c.sas_file, c.sas_env)?
            {
                Some(credential) => credential,
                None if c.managed_identity => Credential::ManagedIdentity {
                    client_id: azure.client_id.clone(),
                },
                None => Credential::Anonymous, // clap's group guarantees --anonymous here
            };
            let spec = azure_spec(true, account, container, azure.endpoint, credential)?;
            (common, spec, azure.create_if_not_exists)
        }
        Register::AzureFile {
            common,
            account,
            share,
            credential: c,
            azure,
        } => {
            let credential = match secret_from_flags(c.key_file, c.key_env, c.sas_file, c.sas_env)?
            {
                Some(credential) => credential,
                // clap's group guarantees --managed-identity here
                None => Credential::ManagedIdentity {
                    client_id: azure.client_id.clone(),
                },
            };
            let spec = azure_spec(false, account, share, azure.endpoint, credential)?;
            (common, spec, azure.create_if_not_exists)
        }
    };
    add(config_dir, common, spec, create)
}

/// Adds a checked definition to the registry (creating the container first when asked).
fn add(
    config_dir: &Path,
    common: Common,
    spec: DatastoreSpec,
    create: bool,
) -> Result<i32, CliError> {
    check_datastore_name(&common.name)
        .map_err(|message| CliError::InvalidDefinition(format!("--name: {message}")))?;
    // Secret files are checked now, so a mistake shows at registration, not in a job.
    if let Some(secret) = spec.credential().and_then(Credential::secret_ref) {
        secret.check_permissions()?;
    }
    let mut registry = super::load_registry(config_dir)?;
    if registry.datastores.contains_key(&common.name) && !common.overwrite {
        return Err(CliError::InvalidDefinition(format!(
            "datastore {:?} already exists; pass --overwrite to replace it",
            common.name
        )));
    }
    if create {
        create_container(&spec)?;
    }
    let kind = spec.kind();
    registry.datastores.insert(common.name.clone(), spec);
    save(&registry, config_dir)?;
    eprintln!("registered {} datastore {}", kind, common.name);
    Ok(0)
}

/// Builds an Azure datastore through the same validation as JSON definitions, so the CLI and
/// manifests accept exactly the same things. Problems name the flags.
fn azure_spec(
    blob: bool,
    account: String,
    container: String,
    endpoint: Option<String>,
    credential: Credential,
) -> Result<DatastoreSpec, CliError> {
    checked_azure_spec(blob, account, container, endpoint, credential).map_err(|problems| {
        CliError::InvalidDefinition(
            problems
                .iter()
                .map(|p| flag_name(p))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// `azure_spec` with the problems as JSON fields say them (`container_name: …`).
pub(super) fn checked_azure_spec(
    blob: bool,
    account: String,
    container: String,
    endpoint: Option<String>,
    credential: Credential,
) -> Result<DatastoreSpec, Vec<String>> {
    let location = AzureLocation {
        account_name: account,
        container,
        endpoint,
        credential,
    };
    let spec = if blob {
        DatastoreSpec::AzureBlob(location)
    } else {
        DatastoreSpec::AzureFile(location)
    };
    let mut issues = Issues::default();
    let parsed = DatastoreSpec::parse(&spec.to_json(), "", Path::new("/"), &mut issues);
    match parsed {
        Some(parsed) if issues.is_empty() => Ok(parsed),
        _ => Err(issues.iter().map(|i| i.to_string()).collect()),
    }
}

/// Names the CLI flag behind a JSON field in messages.
fn flag_name(message: &str) -> String {
    [
        ("account_name", "--account"),
        ("container_name", "--container"),
        ("share_name", "--share"),
        ("endpoint", "--endpoint"),
    ]
    .iter()
    .fold(message.to_owned(), |m, (field, flag)| {
        m.replacen(&format!("{field}:"), &format!("{flag}:"), 1)
    })
}

fn create_failed(what: &str, name: &str, source: crate::store::StoreError) -> CliError {
    CliError::Storage {
        context: format!("--create-if-not-exists: cannot create {what} {name:?}"),
        source,
        then: "; nothing was registered",
    }
}

/// `--create-if-not-exists`: the only time registration contacts storage. Registration happens
/// only once the container exists.
fn create_container(spec: &DatastoreSpec) -> Result<(), CliError> {
    let resources = crate::store::Resources::new(crate::model::budget::DEFAULT_MEMORY_BUDGET);
    match spec {
        DatastoreSpec::AzureBlob(location) => {
            let url = spec.service_url().expect("Azure kinds have a service URL");
            let failed = |source| create_failed("container", &location.container, source);
            let store = crate::store::azure::blob::BlobStore::new(location, &url, &resources)
                .map_err(&failed)?;
            super::runtime()?
                .block_on(store.create_container())
                .map_err(failed)
        }
        DatastoreSpec::AzureFile(location) => {
            let url = spec.service_url().expect("Azure kinds have a service URL");
            let failed = |source| create_failed("share", &location.container, source);
            let store = crate::store::azure::file::FileStore::new(location, &url, &resources)
                .map_err(&failed)?;
            super::runtime()?
                .block_on(store.create_share())
                .map_err(failed)
        }
        DatastoreSpec::Local { .. } => Ok(()),
    }
}
