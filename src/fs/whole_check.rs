//! A mounted file read from its first byte to its last is checked against the CRC64 stored with
//! the object: the CRC of each fetched range is combined, in file order, into the CRC of the
//! whole. Ranges may arrive out of order (read-ahead runs beside demand reads); those that
//! start beyond the checked prefix wait, as a CRC and a length, until the gap is filled. A file
//! read in pieces that never join (seeks, overlaps) gets no verdict: nothing is claimed.
//!
//! A mismatch fails the read that completed the file, and every later read of that open file
//! (EIO): the reader that got to the end learns that what it read was wrong, as it would from a
//! download that failed its check.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::model::ObjectPath;
use crate::store::StoreError;
use crate::store::checksum::{crc64, crc64_combine, crc64_hex};

/// Ranges waiting for the gap before them to be filled; beyond this the check gives up (a
/// reader seeking around does not get its CRCs kept forever).
const MAX_WAITING: usize = 256;

#[derive(Debug)]
pub struct WholeCheck {
    expected: u64,
    size: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes `0..checked` are combined into `crc`.
    checked: u64,
    crc: u64,
    /// Start → (end, CRC) of ranges beyond `checked`.
    waiting: BTreeMap<u64, (u64, u64)>,
    verdict: Option<Verdict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Matched,
    Mismatch(u64),
    /// The pieces could not be joined: no claim either way.
    GaveUp,
}

impl WholeCheck {
    /// A check of an object of `size` bytes whose stored CRC64 is `expected`.
    pub fn new(expected: u64, size: u64) -> Self {
        Self {
            expected,
            size,
            state: Mutex::new(State::default()),
        }
    }

    /// Fails once the whole file was found not to match.
    pub fn refuse(&self, path: &ObjectPath) -> Result<(), StoreError> {
        match self.state.lock().unwrap().verdict {
            Some(Verdict::Mismatch(got)) => Err(self.mismatch(path, got)),
            _ => Ok(()),
        }
    }

    /// Adds bytes `start..start + data.len()` as fetched; the range that completes the file
    /// gets the verdict.
    pub fn add(&self, path: &ObjectPath, start: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap();
        if state.verdict.is_some() {
            drop(state);
            return self.refuse(path);
        }
        let end = start + data.len() as u64;
        if end <= state.checked || data.is_empty() {
            return Ok(());
        }
        if start <= state.checked {
            let skip = (state.checked - start) as usize;
            extend(&mut state, crc64(&data[skip..]), end);
        } else if state.waiting.len() < MAX_WAITING {
            state.waiting.insert(start, (end, crc64(data)));
        } else {
            state.verdict = Some(Verdict::GaveUp);
            state.waiting.clear();
            return Ok(());
        }
        // Ranges that now join the checked prefix; one that overlaps it cannot be cut (only
        // its CRC was kept), so the check ends without a verdict.
        while let Some((&first, &(until, crc))) = state.waiting.iter().next() {
            if first > state.checked {
                break;
            }
            state.waiting.remove(&first);
            if first < state.checked {
                state.verdict = Some(Verdict::GaveUp);
                state.waiting.clear();
                return Ok(());
            }
            extend(&mut state, crc, until);
        }
        if state.checked >= self.size {
            let got = state.crc;
            state.verdict = Some(match got == self.expected {
                true => Verdict::Matched,
                false => Verdict::Mismatch(got),
            });
            drop(state);
            if got != self.expected {
                tracing::error!(object = %path, "read whole through the mount, its bytes do \
                    not match the CRC64 stored with it; reads of the open file fail (EIO)");
            }
            return self.refuse(path);
        }
        Ok(())
    }

    fn mismatch(&self, path: &ObjectPath, got: u64) -> StoreError {
        StoreError::Service {
            context: path.to_string(),
            message: format!(
                "CRC64 mismatch (stored {}, read {})",
                crc64_hex(self.expected),
                crc64_hex(got)
            ),
        }
    }
}

fn extend(state: &mut State, crc: u64, end: u64) {
    let len = end - state.checked;
    state.crc = crc64_combine(state.crc, crc, len);
    state.checked = end;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> ObjectPath {
        ObjectPath::parse("f").unwrap()
    }

    fn data() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn ranges_in_any_order_and_overlapping_the_prefix_are_checked() {
        let data = data();
        let check = WholeCheck::new(crc64(&data), data.len() as u64);
        check.add(&path(), 6000, &data[6000..]).unwrap();
        check.add(&path(), 0, &data[..4000]).unwrap();
        // Overlaps what is checked: only its new bytes count.
        check.add(&path(), 3000, &data[3000..6000]).unwrap();
        assert_eq!(check.state.lock().unwrap().verdict, Some(Verdict::Matched));
        check.refuse(&path()).unwrap();
    }

    #[test]
    fn a_flipped_byte_fails_the_read_that_completes_the_file_and_every_later_one() {
        let data = data();
        let check = WholeCheck::new(crc64(&data), data.len() as u64);
        let mut bad = data.clone();
        bad[7777] ^= 0x01;
        check.add(&path(), 0, &bad[..5000]).unwrap();
        let error = check.add(&path(), 5000, &bad[5000..]).unwrap_err();
        assert!(error.to_string().contains("CRC64 mismatch"), "{error}");
        assert!(check.refuse(&path()).is_err());
        assert!(check.add(&path(), 0, &data[..10]).is_err());
    }

    #[test]
    fn pieces_that_cannot_be_joined_get_no_verdict() {
        let data = data();
        let check = WholeCheck::new(crc64(b"something else"), data.len() as u64);
        check.add(&path(), 4000, &data[4000..8000]).unwrap();
        check.add(&path(), 0, &data[..5000]).unwrap();
        check.add(&path(), 8000, &data[8000..]).unwrap();
        assert_eq!(check.state.lock().unwrap().verdict, Some(Verdict::GaveUp));
        check.refuse(&path()).unwrap();
    }
}
