//! The shared vocabulary: the types every part of dataref speaks in, and nothing else.
//!
//! This module is a leaf: it imports nothing from the rest of the crate (the architecture test
//! in `tests/architecture.rs` holds it to that), so the manifest, the stores, the transfer
//! engine and the filesystem can all depend on it without depending on each other.
//!
//! - [`object_path`]: a validated path inside a datastore;
//! - [`datastore`]: datastore definitions (kinds, locations, credentials) and their parsing;
//! - [`secret`]: secrets held by reference, redacted values;
//! - [`local_path`]: how user-written local paths resolve;
//! - [`issues`]: the collector of validation problems, each with its JSON path;
//! - [`settings`]: job-wide settings (upload policy, verification, mount and cache settings);
//! - [`budget`]: the one memory budget of a job;
//! - [`retry`]: the one retry policy;
//! - [`metrics`]: what the data path costs each reference (counters, latency histograms);
//! - [`process`]: the process table as `/proc` shows it;
//! - [`random`]: random numbers for names and delays.

pub mod budget;
pub mod datastore;
pub mod durable;
pub mod issues;
pub mod local_path;
pub mod metrics;
pub mod object_path;
pub mod process;
pub mod random;
pub mod retry;
pub mod secret;
pub mod settings;

pub use budget::MemoryBudget;
pub use datastore::{AzureLocation, Credential, DatastoreSpec};
pub use issues::{Issue, Issues};
pub use local_path::{normalize_lexically, resolve_path};
pub use object_path::{ObjectPath, PathError};
pub use retry::{RetryPolicy, Retryable};
pub use secret::{Secret, SecretError, SecretRef, UserIds};
pub use settings::{MountSettings, OutputSync, SyncMode, UploadPolicy, Verify};
