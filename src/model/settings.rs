//! Job-wide settings: the upload policy and the mount settings (with the Azure ML tuning
//! variables `DATASET_MOUNT_*` honoured).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::issues::{Issues, Object};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadPolicy {
    /// Upload after success, failure and preemption (Azure ML's behaviour).
    Always,
    /// Skip uploads only when the script failed on its own.
    OnSuccess,
}

impl UploadPolicy {
    pub fn parse(top: &Object<'_>, issues: &mut Issues) -> Self {
        match top.string("upload_policy", issues) {
            None | Some("always") => UploadPolicy::Always,
            Some("on_success") => UploadPolicy::OnSuccess,
            Some(other) => {
                issues.push(
                    "upload_policy",
                    format!("expected \"always\" or \"on_success\", got {other:?}"),
                );
                UploadPolicy::Always
            }
        }
    }
}

/// How downloads check what they received against the checksums stored with each object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// The stored CRC64 when there is one (checked per range, in parallel), else the stored
    /// MD5, else nothing; the report says which.
    #[default]
    Auto,
    /// The stored MD5, required: an object without one fails (AzCopy's `--check-md5
    /// FailIfDifferentOrMissing`).
    Md5,
    /// No check.
    Off,
}

impl Verify {
    pub const NAMES: [&str; 3] = ["auto", "md5", "off"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "md5" => Some(Self::Md5),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    /// The `verify` field of `obj` (the manifest, or one reference), when given.
    pub fn parse(obj: &Object<'_>, issues: &mut Issues) -> Option<Self> {
        let name = obj.string("verify", issues)?;
        let verify = Self::from_name(name);
        if verify.is_none() {
            issues.push(
                obj.field_path("verify"),
                format!("expected \"auto\", \"md5\" or \"off\", got {name:?}"),
            );
        }
        verify
    }
}

/// When an `upload` reference's files are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// After the script exits (success, failure, preemption): Azure ML's `upload`.
    #[default]
    OnExit,
    /// While the script runs: each file after it is closed for writing or renamed into place,
    /// commit markers after the files closed before them.
    Continuous,
}

/// How an `upload` reference is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputSync {
    pub mode: SyncMode,
    /// File names (globs, matched against the name and the path under the folder) that mark a
    /// checkpoint as complete, besides the built-in ones (`.metadata`, `trainer_state.json`).
    pub commit_files: Vec<String>,
    /// The reference's upload rate bound, in bytes per second.
    pub max_bytes_per_second: Option<u64>,
}

pub const DEFAULT_RESERVED_FREE_DISK: u64 = 150 * 1024 * 1024;
pub const DEFAULT_ATTRIBUTE_TTL: Duration = Duration::from_secs(60);

/// How mounts cache (the manifest's `mount` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSettings {
    /// Disk cache directory; `None` = under the job directory.
    pub cache_dir: Option<PathBuf>,
    /// Disk cache cap; `None` = bounded only by `reserved_free_disk_bytes`.
    pub cache_size_bytes: Option<u64>,
    /// Free space the cache (and downloads) never eat into.
    pub reserved_free_disk_bytes: u64,
    pub attribute_ttl: Duration,
}

impl Default for MountSettings {
    fn default() -> Self {
        Self {
            cache_dir: None,
            cache_size_bytes: None,
            reserved_free_disk_bytes: DEFAULT_RESERVED_FREE_DISK,
            attribute_ttl: DEFAULT_ATTRIBUTE_TTL,
        }
    }
}

impl MountSettings {
    /// Reads `mount`, then fills what it leaves unset from the Azure ML variables in
    /// `environment`. An explicit `mount` field wins over a variable.
    pub fn parse(
        top: &Object<'_>,
        environment: &[(String, String)],
        base: &Path,
        issues: &mut Issues,
    ) -> Self {
        let mut settings = Self::default();
        let mut explicit_size = None;
        let mut explicit_reserved = None;
        let mut explicit_ttl = None;
        if let Some(value) = top.get("mount") {
            if let Some(obj) = Object::new(value, "mount", issues) {
                obj.reject_unknown(
                    &[
                        "cache_dir",
                        "cache_size_bytes",
                        "reserved_free_disk_bytes",
                        "attribute_ttl_seconds",
                    ],
                    issues,
                );
                settings.cache_dir = obj
                    .string("cache_dir", issues)
                    .map(|dir| super::resolve_path(base, dir));
                explicit_size = obj.u64("cache_size_bytes", issues);
                explicit_reserved = obj.u64("reserved_free_disk_bytes", issues);
                explicit_ttl = obj
                    .u64("attribute_ttl_seconds", issues)
                    .map(Duration::from_secs);
            }
        }
        let var = |name: &str| {
            environment
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        // Azure ML: a size in bytes or with a unit; a negative size means "use all but this
        // much free space", i.e. a reserved-free-space floor.
        let mut env_size = None;
        let mut env_reserved = None;
        if let Some(text) = var("DATASET_MOUNT_CACHE_SIZE") {
            let path = "environment.DATASET_MOUNT_CACHE_SIZE";
            match text.trim().strip_prefix('-') {
                Some(free) => match parse_size(free) {
                    Ok(bytes) => env_reserved = Some(bytes),
                    Err(e) => issues.push(path, e),
                },
                None => match parse_size(text) {
                    Ok(bytes) => env_size = Some(bytes),
                    Err(e) => issues.push(path, e),
                },
            }
        }
        if let Some(text) = var("DATASET_RESERVED_FREE_DISK_SPACE") {
            match parse_size(text) {
                Ok(bytes) => env_reserved = Some(bytes),
                Err(e) => issues.push("environment.DATASET_RESERVED_FREE_DISK_SPACE", e),
            }
        }
        // Azure ML gives this TTL in milliseconds; round up to whole seconds.
        let env_ttl = var("DATASET_MOUNT_ATTRIBUTE_CACHE_TTL").and_then(|text| {
            match text.trim().parse::<u64>() {
                Ok(ms) => Some(Duration::from_secs(ms.div_ceil(1000))),
                Err(_) => {
                    issues.push(
                        "environment.DATASET_MOUNT_ATTRIBUTE_CACHE_TTL",
                        format!("expected milliseconds as an integer, got {text:?}"),
                    );
                    None
                }
            }
        });
        settings.cache_size_bytes = explicit_size.or(env_size);
        settings.reserved_free_disk_bytes = explicit_reserved
            .or(env_reserved)
            .unwrap_or(DEFAULT_RESERVED_FREE_DISK);
        settings.attribute_ttl = explicit_ttl.or(env_ttl).unwrap_or(DEFAULT_ATTRIBUTE_TTL);
        settings
    }
}

/// Parses `1048576`, `512MB`, `10 GB`, `1.5GiB`. Decimal units are powers of 1000 and binary
/// units powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1000,
        "M" | "MB" => 1000_u64.pow(2),
        "G" | "GB" => 1000_u64.pow(3),
        "T" | "TB" => 1000_u64.pow(4),
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size (e.g. 1048576, 512MB, 10GiB)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1048576, 512MB, 10GiB)"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("10 GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("512mb"), Ok(512_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
    }
}
