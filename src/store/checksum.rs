//! Whole-object checksums: the MD5 other tools record and check, and CRC-64/NVME (Azure
//! Storage's CRC64), which dataref records too because CRCs *combine*: the CRC of a file follows
//! from the CRCs of its ranges, so every range is checked by the worker that fetched it, in
//! parallel, and no pass over the whole file is needed. An MD5 can only be computed in order.

use crc_fast::{CrcAlgorithm, Digest};

/// The metadata name under which the whole-object CRC64 is stored (16 lowercase hex digits).
/// Azure returns metadata names in lower case; this one is a valid C# identifier, as they
/// must be.
pub const CRC64_METADATA: &str = "crc64";

/// Checksums recorded with an object when it is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksums {
    /// Whole-object MD5 (Blob `Content-MD5`).
    pub md5: Option<[u8; 16]>,
    /// Whole-object CRC-64/NVME.
    pub crc64: Option<u64>,
}

impl Checksums {
    /// Only an MD5, as objects written by other tools have.
    pub fn md5_only(md5: [u8; 16]) -> Self {
        Self {
            md5: Some(md5),
            crc64: None,
        }
    }
}

/// A running CRC-64/NVME.
#[derive(Clone)]
pub struct Crc64(Digest);

impl Default for Crc64 {
    fn default() -> Self {
        Self(Digest::new(CrcAlgorithm::Crc64Nvme))
    }
}

impl std::fmt::Debug for Crc64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crc64({:016x})", self.0.finalize())
    }
}

impl Crc64 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn value(&self) -> u64 {
        self.0.finalize()
    }
}

/// The CRC-64/NVME of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64Nvme, data)
}

/// The CRC of `a` followed by `b`, from the CRC of each and the length of `b`.
pub fn crc64_combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
    if len_b == 0 {
        return crc_a;
    }
    crc_fast::checksum_combine(CrcAlgorithm::Crc64Nvme, crc_a, crc_b, len_b)
}

/// Combines the CRCs of consecutive ranges `(crc, len)`, first to last, into the CRC of the
/// whole. The CRC of nothing is 0.
pub fn crc64_of_parts(parts: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    parts
        .into_iter()
        .fold(0, |whole, (crc, len)| crc64_combine(whole, crc, len))
}

/// How a CRC64 is written in metadata and messages.
pub fn crc64_hex(crc: u64) -> String {
    format!("{crc:016x}")
}

/// Reads a stored CRC64; anything but 16 hex digits is no CRC at all.
pub fn parse_crc64(text: &str) -> Option<u64> {
    let text = text.trim();
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn it_is_crc64_nvme_as_azure_storage_computes_it() {
        assert_eq!(crc64(b"123456789"), 0xae8b_1486_0a79_9888);
        assert_eq!(crc64(b""), 0);
        let mut running = Crc64::default();
        running.update(b"1234");
        running.update(b"56789");
        assert_eq!(running.value(), 0xae8b_1486_0a79_9888);
    }

    #[test]
    fn stored_values_round_trip_and_garbage_is_no_crc() {
        let crc = crc64(b"123456789");
        assert_eq!(crc64_hex(crc), "ae8b14860a799888");
        assert_eq!(parse_crc64(&crc64_hex(crc)), Some(crc));
        assert_eq!(parse_crc64(&crc64_hex(7)), Some(7));
        assert_eq!(parse_crc64("ae8b14860a79988"), None);
        assert_eq!(parse_crc64("zz8b14860a799888"), None);
        assert_eq!(parse_crc64(""), None);
    }

    proptest! {
        /// The combine of any split into ranges equals the CRC of the whole file.
        #[test]
        fn combined_ranges_equal_the_whole(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort();
            let parts = cuts
                .windows(2)
                .map(|w| (crc64(&data[w[0]..w[1]]), (w[1] - w[0]) as u64));
            prop_assert_eq!(crc64_of_parts(parts), crc64(&data));
        }
    }
}
