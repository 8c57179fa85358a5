//! The upload journal (format v1, `docs/upload-journal.md`): what a job's multi-part uploads
//! had done when dataref died, so that the next run with the same job directory finishes them
//! without re-sending the parts the service already holds.
//!
//! Records are JSON Lines appended to `<job-dir>/uploads.journal` and `fsync`ed one by one. A
//! line that cannot be read is skipped: the journal only saves work, so losing a record costs
//! at worst a restarted upload (the service's block list, not the `staged` lines, says which
//! parts exist). For the same reason a record that cannot be written never fails an upload: the
//! first failure is logged and the journal stops there, so what is on disk is a prefix of the
//! truth, exactly what a crash at that moment would have left.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::model::ObjectPath;

/// The journal's name in the job directory.
pub const JOURNAL_FILE: &str = "uploads.journal";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("upload journal {}: {source}", path.display())]
pub struct JournalError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    v: u32,
    #[serde(flatten)]
    record: Record,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Record {
    /// Written before the first part is sent.
    Start(Start),
    /// Part `part` was accepted by the service.
    Staged { object: String, part: u64 },
    /// The object is visible under its final name, with this (base64) MD5.
    Committed { object: String, md5: String },
    /// Every upload of the reference finished.
    Done {
        #[serde(rename = "ref")]
        reference: String,
    },
}

/// What a multi-part upload is: an earlier one is resumed only if all of it still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Start {
    #[serde(rename = "ref")]
    pub reference: String,
    pub object: String,
    pub source: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub part_size: u64,
    pub parts: u64,
    /// What the store needs to find this upload's parts again (`PartUpload::upload_id`; for
    /// Azure Blob the tag in its block ids). Random per `start`, so parts staged for another
    /// content of the same file never count as this one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// The journal file as appends see it.
#[derive(Debug)]
enum Writer {
    /// Opened (and created) by the first record: a job that journals nothing leaves no file.
    NotYetOpen,
    Open(File),
    /// A record could not be written: nothing more is, so the file stays a prefix of the truth.
    Broken,
}

/// The open journal of one job directory.
#[derive(Debug)]
pub struct UploadJournal {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    /// Why the journal stopped being written, once it did.
    failure: OnceLock<String>,
    /// Uploads an earlier run started and neither committed nor closed with its reference's
    /// `done`, by object name (the last `start` of an object wins).
    unfinished: HashMap<String, Start>,
}

impl UploadJournal {
    /// Reads `<job_dir>/uploads.journal`, if there is one.
    pub fn open(job_dir: &Path) -> Result<Self, JournalError> {
        let path = job_dir.join(JOURNAL_FILE);
        let failed = |source| JournalError {
            path: path.clone(),
            source,
        };
        let mut text = Vec::new();
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(mut file) => {
                file.read_to_end(&mut text).map_err(failed)?;
                let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if complete < text.len() {
                    // A torn last line (dataref died mid-write): cut it, or the next record
                    // would be glued to it and lost too.
                    file.set_len(complete as u64).map_err(failed)?;
                    text.truncate(complete);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        Ok(Self {
            unfinished: unfinished_uploads(&text, &path),
            path,
            writer: Arc::new(Mutex::new(Writer::NotYetOpen)),
            failure: OnceLock::new(),
        })
    }

    /// The journal as seen by the uploads of one reference.
    pub fn for_reference<'a>(&'a self, reference: &'a str) -> ReferenceJournal<'a> {
        ReferenceJournal {
            journal: self,
            reference,
        }
    }

    /// Why the journal stopped being written (the disk filled, ...), if it did: uploads cut
    /// short after that cannot be resumed.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Appends one record and waits until it is on disk. A failure is logged once and stops
    /// the journal; the upload goes on without it.
    pub(crate) async fn append(&self, record: Record) {
        let mut line = serde_json::to_vec(&Line {
            v: FORMAT_VERSION,
            record,
        })
        .expect("journal records always serialize");
        line.push(b'\n');
        let writer = self.writer.clone();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().unwrap();
            if let Writer::NotYetOpen = *writer {
                match OpenOptions::new().append(true).create(true).open(&path) {
                    Ok(file) => *writer = Writer::Open(file),
                    Err(e) => {
                        *writer = Writer::Broken;
                        return Err(e);
                    }
                }
            }
            let Writer::Open(file) = &mut *writer else {
                return Ok(());
            };
            let written = file.write_all(&line).and_then(|()| file.sync_data());
            if written.is_err() {
                *writer = Writer::Broken;
            }
            written
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(source) = written {
            let error = JournalError {
                path: self.path.clone(),
                source,
            };
            if self.failure.set(error.to_string()).is_ok() {
                tracing::warn!(
                    "{error}; not written any more: uploads cut short now cannot be resumed"
                );
            }
        }
    }
}

/// Replays the complete lines of a journal.
fn unfinished_uploads(text: &[u8], path: &Path) -> HashMap<String, Start> {
    let mut unfinished = HashMap::new();
    for (number, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let record = match serde_json::from_slice::<Line>(line) {
            Ok(Line {
                v: FORMAT_VERSION,
                record,
            }) => record,
            Ok(Line { v, .. }) => {
                tracing::warn!("{}:{}: format v{v} skipped", path.display(), number + 1);
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    "{}:{}: unreadable, skipped: {e}",
                    path.display(),
                    number + 1
                );
                continue;
            }
        };
        match record {
            Record::Start(start) => {
                unfinished.insert(start.object.clone(), start);
            }
            Record::Staged { .. } => {}
            Record::Committed { object, .. } => {
                unfinished.remove(&object);
            }
            Record::Done { reference } => unfinished.retain(|_, s| s.reference != reference),
        }
    }
    unfinished
}

/// The journal handle the upload of one reference writes through.
#[derive(Debug, Clone, Copy)]
pub struct ReferenceJournal<'a> {
    journal: &'a UploadJournal,
    reference: &'a str,
}

impl ReferenceJournal<'_> {
    /// The `start` record of an upload of `source` (with its size and mtime) to `object`.
    pub(crate) fn start(
        &self,
        object: &ObjectPath,
        source: &Path,
        size: u64,
        mtime_ns: i64,
        part_size: u64,
    ) -> Start {
        Start {
            reference: self.reference.to_owned(),
            object: object.to_string(),
            source: source.to_path_buf(),
            size,
            mtime_ns,
            part_size,
            parts: size.div_ceil(part_size.max(1)),
            upload_id: None,
        }
    }

    /// The upload id of an upload an earlier run left unfinished that is this very one: same
    /// source, unchanged since (size and mtime), same part layout.
    pub(crate) fn unfinished_id(&self, start: &Start) -> Option<String> {
        let recorded = self.journal.unfinished.get(&start.object)?;
        let same = Start {
            upload_id: recorded.upload_id.clone(),
            ..start.clone()
        };
        (*recorded == same).then(|| recorded.upload_id.clone())?
    }

    /// Whether an earlier run left an upload to `object` unfinished (for this reference).
    pub(crate) fn has_unfinished(&self, object: &ObjectPath) -> bool {
        self.journal
            .unfinished
            .get(object.as_str())
            .is_some_and(|start| start.reference == self.reference)
    }

    /// Whether `start` (with its upload id) is what the journal already says.
    pub(crate) fn is_unfinished(&self, start: &Start) -> bool {
        self.journal.unfinished.get(&start.object) == Some(start)
    }

    pub(crate) async fn started(&self, start: Start) {
        self.journal.append(Record::Start(start)).await
    }

    pub(crate) async fn staged(&self, object: &ObjectPath, part: u64) {
        let object = object.to_string();
        self.journal.append(Record::Staged { object, part }).await
    }

    pub(crate) async fn committed(&self, object: &ObjectPath, md5: [u8; 16]) {
        use base64::Engine as _;
        let object = object.to_string();
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5);
        self.journal.append(Record::Committed { object, md5 }).await
    }

    pub(crate) async fn done(&self) {
        let reference = self.reference.to_owned();
        self.journal.append(Record::Done { reference }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectPath {
        ObjectPath::parse(name).unwrap()
    }

    fn start_of(journal: &UploadJournal, name: &str, mtime_ns: i64) -> Start {
        journal.for_reference("model").start(
            &object(name),
            Path::new("/work/outputs/model.bin"),
            20 << 20,
            mtime_ns,
            8 << 20,
        )
    }

    #[test]
    fn records_read_as_documented() {
        let line = r#"{"v":1,"op":"start","ref":"model","object":"runs/42/model.bin","source":"/work/outputs/model.bin","size":1073741824,"mtime_ns":1764093123456789012,"part_size":8388608,"parts":128}"#;
        let parsed: Line = serde_json::from_str(line).unwrap();
        assert_eq!(parsed.v, 1);
        let Record::Start(start) = &parsed.record else {
            panic!("not a start: {parsed:?}");
        };
        assert_eq!(start.mtime_ns, 1_764_093_123_456_789_012);
        assert_eq!(start.parts, 128);
        // Written back byte for byte: the field order is the documented one.
        assert_eq!(serde_json::to_string(&parsed).unwrap(), line);
        for line in [
            r#"{"v":1,"op":"staged","object":"runs/42/model.bin","part":17}"#,
            r#"{"v":1,"op":"committed","object":"runs/42/model.bin","md5":"sHoM1w0cH8Q8m7lQ1yHc9A=="}"#,
            r#"{"v":1,"op":"done","ref":"model"}"#,
        ] {
            let parsed: Line = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&parsed).unwrap(), line);
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored_and_cut_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::open(dir.path()).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        assert!(!path.exists(), "created before its first record");
        let start = start_of(&journal, "runs/1/model.bin", 7);
        let model = journal.for_reference("model");
        model.started(start.clone()).await;
        model.staged(&object("runs/1/model.bin"), 0).await;
        drop(journal);
        // dataref died while writing `committed`.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"v":1,"op":"committed","obj"#).unwrap();
        drop(file);

        let journal = UploadJournal::open(dir.path()).unwrap();
        assert!(journal.for_reference("model").is_unfinished(&start));
        journal
            .for_reference("model")
            .staged(&object("runs/1/model.bin"), 1)
            .await;
        drop(journal);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[2],
            r#"{"v":1,"op":"staged","object":"runs/1/model.bin","part":1}"#
        );
    }

    #[tokio::test]
    async fn committed_or_done_uploads_are_finished() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::open(dir.path()).unwrap();
        let model = journal.for_reference("model");
        let committed = start_of(&journal, "runs/1/a.bin", 1);
        let closed = start_of(&journal, "runs/1/b.bin", 1);
        let open = start_of(&journal, "runs/1/c.bin", 1);
        model.started(committed.clone()).await;
        model.started(closed.clone()).await;
        model.committed(&object("runs/1/a.bin"), [0; 16]).await;
        model.done().await;
        model.started(open.clone()).await;
        drop(journal);

        let journal = UploadJournal::open(dir.path()).unwrap();
        let model = journal.for_reference("model");
        assert!(!model.is_unfinished(&committed));
        assert!(!model.is_unfinished(&closed));
        assert!(model.is_unfinished(&open));
        // A source that changed since (another mtime) is another upload.
        let changed = start_of(&journal, "runs/1/c.bin", 2);
        assert!(!model.is_unfinished(&changed));
    }

    #[test]
    fn unreadable_lines_and_other_versions_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"v":1,"op":"start","ref":"model","object":"a","source":"/a","size":9,"mtime_ns":1,"part_size":4,"parts":3}"#;
        let text = format!(
            "not json\n{good}\n{}\n",
            good.replace(r#""v":1"#, r#""v":2"#)
                .replace(r#""object":"a""#, r#""object":"b""#)
        );
        std::fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
        let journal = UploadJournal::open(dir.path()).unwrap();
        let keys: Vec<&String> = journal.unfinished.keys().collect();
        assert_eq!(keys, vec!["a"]);
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_written_stops_the_journal_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::open(dir.path()).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        // The file cannot be created: a directory took its name.
        std::fs::create_dir(&path).unwrap();
        let model = journal.for_reference("model");
        model.started(start_of(&journal, "runs/1/a.bin", 1)).await;
        let failure = journal.failure().expect("the failure is kept").to_owned();
        assert!(failure.contains(JOURNAL_FILE), "{failure}");
        // Nothing is written after a failure, even once writing would work again: the file
        // stays what a crash would have left, never a record with a hole before it.
        std::fs::remove_dir(&path).unwrap();
        model.staged(&object("runs/1/a.bin"), 0).await;
        model.done().await;
        assert!(!path.exists());
        assert_eq!(journal.failure(), Some(failure.as_str()));
    }

    #[tokio::test]
    async fn an_unfinished_upload_is_resumed_under_its_recorded_id() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::open(dir.path()).unwrap();
        let model = journal.for_reference("model");
        let with_id = Start {
            upload_id: Some("1f2e3d4c5b6a".into()),
            ..start_of(&journal, "runs/1/a.bin", 1)
        };
        model.started(with_id.clone()).await;
        model.started(start_of(&journal, "runs/1/b.bin", 1)).await;
        drop(journal);

        let journal = UploadJournal::open(dir.path()).unwrap();
        let model = journal.for_reference("model");
        let again = start_of(&journal, "runs/1/a.bin", 1);
        assert_eq!(model.unfinished_id(&again).as_deref(), Some("1f2e3d4c5b6a"));
        assert!(model.is_unfinished(&with_id));
        assert!(!model.is_unfinished(&again), "another id is another upload");
        // Changed since: not this upload, whatever its id.
        assert_eq!(
            model.unfinished_id(&start_of(&journal, "runs/1/a.bin", 2)),
            None
        );
        // Recorded without an id (a store that cannot resume): nothing to resume.
        assert_eq!(
            model.unfinished_id(&start_of(&journal, "runs/1/b.bin", 1)),
            None
        );
    }
}
