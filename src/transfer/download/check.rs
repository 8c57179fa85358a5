//! What a downloaded file is checked against, and the sink a range's bytes go through: checked
//! as they arrive (a small file's MD5, a range's CRC64), counted, then stored.

use bytes::Bytes;
use md5::{Digest, Md5};

use super::local_file::FileWriter;
use super::{Engine, FileError, FileErrorKind, Planned, hex};
use crate::model::Verify;
use crate::store::checksum::{Crc64, crc64_hex};
use crate::store::{ObjectMeta, RangeSink};
use crate::transfer::Check;
use crate::transfer::progress::Progress;

/// With nothing known to check a file against, `verify: auto` takes a CRC64 its answers carry.
pub(super) fn may_learn(engine: &Engine, check: Check) -> bool {
    check == Check::Nothing && engine.verify == Verify::Auto
}

/// What a file is checked against, as `verify` asks and the object allows.
pub(super) fn check_for(verify: Verify, meta: &ObjectMeta) -> Result<Check, FileError> {
    Ok(match verify {
        Verify::Off => Check::Nothing,
        Verify::Auto => match (meta.crc64, meta.content_md5) {
            (Some(crc), _) => Check::Crc64(crc),
            (None, Some(md5)) => Check::Md5(md5),
            (None, None) => Check::Nothing,
        },
        Verify::Md5 => match meta.content_md5 {
            Some(md5) => Check::Md5(md5),
            None => {
                return Err(FileError::store(format!(
                    "{}: no Content-MD5 is stored with it, and verify is \"md5\"; not downloaded",
                    meta.path
                )));
            }
        },
    })
}

/// The CRC64 every part's answer carried, when they did: answers that disagree, or only some
/// carrying one, were of different versions of the file.
pub(super) fn learned_by_all(
    item: &Planned,
    fetched: &[(u64, u64, u64, Option<u64>)],
) -> Result<Option<u64>, FileError> {
    let mut learned = fetched.iter().map(|(.., stored)| *stored);
    let first = learned.next().flatten();
    if learned.any(|stored| stored != first) {
        return Err(changed_while_read(item));
    }
    Ok(first)
}

pub(super) fn verify_md5(
    item: &Planned,
    expected: [u8; 16],
    digest: [u8; 16],
) -> Result<(), FileError> {
    if expected != digest {
        return Err(FileError::store(format!(
            "{}: Content-MD5 mismatch (stored {}, received {}); file not kept",
            item.meta.path,
            hex(&expected),
            hex(&digest)
        )));
    }
    Ok(())
}

pub(super) fn verify_crc64(item: &Planned, expected: u64, crc: u64) -> Result<(), FileError> {
    if expected != crc {
        return Err(FileError::store(format!(
            "{}: CRC64 mismatch (stored {}, received {}); file not kept",
            item.meta.path,
            crc64_hex(expected),
            crc64_hex(crc)
        )));
    }
    Ok(())
}

/// An object without a version to pin its reads to (a file share's listing has no ETag) whose
/// answers showed it replaced while it was being read.
fn changed_while_read(item: &Planned) -> FileError {
    FileError {
        message: format!(
            "{}: replaced in storage while being downloaded (its answers carried different \
             checksums); not kept",
            item.meta.path
        ),
        kind: FileErrorKind::Changed,
    }
}

pub(super) fn check_size(item: &Planned, written: u64) -> Result<(), FileError> {
    if written != item.meta.size {
        return Err(FileError::store(format!(
            "{}: received {written} bytes, expected {}",
            item.meta.path, item.meta.size
        )));
    }
    Ok(())
}

/// Where the bytes of a range go: checked (a small file's MD5, a range's CRC64), counted,
/// then stored.
pub(super) struct Sink<'a> {
    target: Target<'a>,
    pub(super) md5: Option<Md5>,
    pub(super) crc: Option<Crc64>,
    progress: &'a Progress,
    /// With nothing known to check against and `verify: auto`, a CRC64 the answer carries
    /// (Azure Files) is learned and checked.
    may_learn: bool,
    learned: Option<u64>,
    /// Bytes have arrived: a CRC64 told only now would not cover them.
    started: bool,
    /// Answers told different CRC64s, or one came after bytes without one.
    inconsistent: bool,
}

pub(super) enum Target<'a> {
    /// A whole small file, appended in memory.
    Memory(&'a mut Vec<Bytes>),
    /// A part of a large file, written at its offset.
    File(&'a mut FileWriter),
}

impl RangeSink for Sink<'_> {
    fn stored_crc64(&mut self, crc: u64) {
        if !self.may_learn {
            return;
        }
        match self.learned {
            None if !self.started => {
                self.learned = Some(crc);
                self.crc = Some(Crc64::default());
            }
            Some(learned) if learned == crc => {}
            _ => self.inconsistent = true,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.started = true;
        let n = chunk.len() as u64;
        if let Some(md5) = &mut self.md5 {
            md5.update(&chunk);
        }
        if let Some(crc) = &mut self.crc {
            crc.update(&chunk);
        }
        match &mut self.target {
            Target::Memory(chunks) => chunks.push(chunk),
            Target::File(writer) => writer.write(chunk).await?,
        }
        self.progress.add_bytes(n);
        Ok(())
    }
}

impl<'a> Sink<'a> {
    pub(super) fn new(
        target: Target<'a>,
        check: Check,
        may_learn: bool,
        progress: &'a Progress,
    ) -> Self {
        Self {
            target,
            md5: matches!(check, Check::Md5(_)).then(Md5::new),
            crc: matches!(check, Check::Crc64(_)).then(Crc64::default),
            progress,
            may_learn,
            learned: None,
            started: false,
            inconsistent: false,
        }
    }

    /// The check learned from the answers (`None`: nothing learned).
    pub(super) fn learned(&self, item: &Planned) -> Result<Option<Check>, FileError> {
        if self.inconsistent {
            return Err(changed_while_read(item));
        }
        Ok(self.learned.map(Check::Crc64))
    }

    pub(super) async fn finish(&mut self) -> std::io::Result<()> {
        match &mut self.target {
            Target::Memory(_) => Ok(()),
            Target::File(writer) => writer.finish().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::checksum::crc64;
    use crate::transfer::ProgressMode;

    fn item() -> Planned {
        Planned {
            meta: ObjectMeta {
                path: crate::model::ObjectPath::parse("d/f.bin").unwrap(),
                ..Default::default()
            },
            dest: "/nowhere/f.bin".into(),
        }
    }

    #[tokio::test]
    async fn a_crc64_told_before_the_bytes_is_learned_and_covers_them() {
        let progress = Progress::start(ProgressMode::Off, "t", 1, 9);
        let mut chunks = Vec::new();
        let mut sink = Sink::new(Target::Memory(&mut chunks), Check::Nothing, true, &progress);
        sink.stored_crc64(7);
        sink.stored_crc64(7); // a resumed read's answer, same version
        sink.write(Bytes::from_static(b"1234")).await.unwrap();
        sink.write(Bytes::from_static(b"56789")).await.unwrap();
        assert_eq!(sink.learned(&item()).unwrap(), Some(Check::Crc64(7)));
        assert_eq!(sink.crc.unwrap().value(), crc64(b"123456789"));
    }

    #[tokio::test]
    async fn answers_of_two_versions_fail_the_file_and_nothing_is_learned_unasked() {
        let progress = Progress::start(ProgressMode::Off, "t", 1, 9);
        let mut chunks = Vec::new();
        let mut sink = Sink::new(Target::Memory(&mut chunks), Check::Nothing, true, &progress);
        sink.stored_crc64(7);
        sink.stored_crc64(8);
        let error = sink.learned(&item()).unwrap_err();
        assert!(error.message.contains("d/f.bin") && error.kind == FileErrorKind::Changed);

        // A CRC64 first told after bytes arrived would not cover them.
        let mut late = Sink::new(Target::Memory(&mut chunks), Check::Nothing, true, &progress);
        late.write(Bytes::from_static(b"1234")).await.unwrap();
        late.stored_crc64(7);
        assert!(late.learned(&item()).is_err());

        // verify: off, or a check already known: the answer's CRC64 is not taken.
        let mut off = Sink::new(
            Target::Memory(&mut chunks),
            Check::Nothing,
            false,
            &progress,
        );
        off.stored_crc64(7);
        assert_eq!(off.learned(&item()).unwrap(), None);
        assert!(off.crc.is_none(), "no CRC computed for nothing");

        // Parts: all told the same CRC64, or the file changed between them.
        let part = |stored| (0, 0, 1, stored);
        assert_eq!(
            learned_by_all(&item(), &[part(Some(7)), part(Some(7))]).unwrap(),
            Some(7)
        );
        assert_eq!(
            learned_by_all(&item(), &[part(None), part(None)]).unwrap(),
            None
        );
        assert!(learned_by_all(&item(), &[part(Some(7)), part(None)]).is_err());
        assert!(learned_by_all(&item(), &[part(Some(7)), part(Some(8))]).is_err());
    }
}
