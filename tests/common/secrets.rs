//! Secrets in tests: files that hold them, and checks that they never leak.

use std::path::{Path, PathBuf};

/// Fails the test if any of `secrets` occurs in `haystack` (`place` says where it was found).
/// The text itself is not shown: it holds the secret.
#[track_caller]
pub fn assert_no_secret(haystack: &str, secrets: &[&str], place: &str) {
    for (index, secret) in secrets.iter().enumerate() {
        assert!(!secret.is_empty(), "secret {index} is empty");
        assert!(
            !haystack.contains(secret),
            "secret {index} leaked into {place}"
        );
    }
}

/// The signature part of a SAS token (what must never leak), percent-decoded.
pub fn sas_signature(sas: &str) -> String {
    let sig = sas.split('&').find_map(|p| p.strip_prefix("sig=")).unwrap();
    percent_encoding::percent_decode_str(sig)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// A secret file of mode 0600 under `dir`. An existing file is replaced (a new inode), as a
/// rotation by a secret manager does.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, value).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    path
}

/// A SAS expiry (`se`) `seconds` from now (negative: in the past), RFC 3339 in UTC.
pub fn sas_expiry(seconds: i64) -> String {
    let at =
        azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::seconds(seconds);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}
