//! The embedded registry's file format: one log file per generation, `log.<generation>`.
//!
//! ```text
//! file    := header record*
//! header  := "MBLKREG\n" version:u32le reserved:u32le          (16 bytes, version 1)
//! record  := magic:u32le length:u32le crc:u32le payload[length]
//! crc     := CRC-32C over (length:u32le ++ payload)
//! payload := JSON {"seq":N,"snapshot":{…}} | {"seq":N,"batches":[[mutation,…],…]}
//! ```
//!
//! The first record of a file is always a snapshot (the whole registry as of `seq`); every other
//! record holds the batches of one group commit, with `seq` one more than the record before.
//! A file is born complete: it is written under a temporary name, fsynced, renamed, and the
//! directory fsynced, so its header and snapshot are never torn. After that it only grows by
//! appending whole records, one `write` and one fsync per record, and the next record is never
//! started before the previous one is durable.
//!
//! Hence the reading rule (`scan`): an invalid record (bad magic, bad length, bad checksum, cut
//! short) *followed by nothing valid* can only be the last write, interrupted by a crash before
//! it was acknowledged: it is a torn tail, and the file is truncated there. An invalid record
//! *followed by a valid one* cannot come from a crash: that is corruption, and the registry
//! refuses to open, naming the file and the offset. (A valid record is one whose magic, length
//! and checksum all agree; random bytes pass with odds of about 2^-64.)

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::crc;
use super::records::{Mutation, RegistrySnapshot};
use super::RegistryError;

/// The first 8 bytes of every log file.
pub(crate) const FILE_MAGIC: &[u8; 8] = b"MBLKREG\n";
/// The format this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes before the first record.
pub(crate) const HEADER_BYTES: usize = 16;
/// Marks the start of a record (bytes `B1 C5 52 47` on disk).
const RECORD_MAGIC: u32 = 0x4752_C5B1;
/// Bytes of a record's magic, length and checksum.
pub(crate) const RECORD_HEADER_BYTES: usize = 12;
/// Largest record payload: bounds what a corrupt length can make us believe.
pub(crate) const RECORD_BYTES_MAX: usize = 256 << 20;
/// Largest log file read at start.
pub(crate) const FILE_BYTES_MAX: u64 = 1 << 30;

const _: () = assert!(RECORD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!((RECORD_BYTES_MAX as u64) < FILE_BYTES_MAX);

/// A decoded record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Position in the registry's history.
    pub(crate) seq: u64,
    /// The whole registry (first record of a file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot: Option<RegistrySnapshot>,
    /// The batches of one group commit, each atomic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) batches: Vec<Vec<Mutation>>,
}

/// The file header.
pub(crate) fn header() -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Frames `payload` as a record.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    assert!(!payload.is_empty() && payload.len() <= RECORD_BYTES_MAX);
    #[allow(clippy::cast_possible_truncation)] // bounded by RECORD_BYTES_MAX, asserted above.
    let length = (payload.len() as u32).to_le_bytes();
    let crc = crc::extend(crc::crc32c(&length), payload);
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&length);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The framed snapshot record for `seq`.
pub(crate) fn snapshot_record(seq: u64, snapshot: &RegistrySnapshot) -> Result<Vec<u8>, String> {
    let record = Record {
        seq,
        snapshot: Some(snapshot.clone()),
        batches: Vec::new(),
    };
    let payload = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    if payload.len() > RECORD_BYTES_MAX {
        return Err(format!(
            "the snapshot takes {} bytes, more than the {RECORD_BYTES_MAX} a record may hold",
            payload.len()
        ));
    }
    Ok(frame(&payload))
}

/// The framed record of one group commit: `batches` are already-encoded JSON arrays.
pub(crate) fn batches_record(seq: u64, batches: &[&[u8]]) -> Vec<u8> {
    let mut payload = format!("{{\"seq\":{seq},\"batches\":[").into_bytes();
    for (i, batch) in batches.iter().enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(batch);
    }
    payload.extend_from_slice(b"]}");
    frame(&payload)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(slice.try_into().ok()?))
}

/// The payload of the record at `at`, if magic, length and checksum agree.
fn valid_record_at(bytes: &[u8], at: usize) -> Result<&[u8], &'static str> {
    if bytes.len() - at < RECORD_HEADER_BYTES {
        return Err("the record header is cut short");
    }
    if u32_at(bytes, at) != Some(RECORD_MAGIC) {
        return Err("bad record magic");
    }
    let length = u32_at(bytes, at + 4).ok_or("the record header is cut short")? as usize;
    if length == 0 || length > RECORD_BYTES_MAX {
        return Err("impossible record length");
    }
    let start = at + RECORD_HEADER_BYTES;
    let payload = bytes
        .get(start..start + length)
        .ok_or("the record is cut short")?;
    let crc = crc::extend(crc::crc32c(&bytes[at + 4..at + 8]), payload);
    if Some(crc) != u32_at(bytes, at + 8) {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// Where the valid records of a file end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// Offset just past the last valid record.
    pub(crate) valid_end: u64,
    /// Bytes after it that belong to a torn last write (to be truncated).
    pub(crate) torn_bytes: u64,
}

/// Reads the file `bytes` (named `path` in errors), handing each record with its offset to
/// `visit` in order. See the module docs for the torn-tail rule.
pub(crate) fn scan(
    path: &Path,
    bytes: &[u8],
    mut visit: impl FnMut(u64, Record) -> Result<(), RegistryError>,
) -> Result<ScanEnd, RegistryError> {
    let corrupt = |offset: usize, reason: String| RegistryError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER_BYTES || &bytes[..8] != FILE_MAGIC {
        return Err(corrupt(0, "not a mesoblk registry log (bad header)".into()));
    }
    let version = u32_at(bytes, 8).unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(RegistryError::Version {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        let payload = match valid_record_at(bytes, at) {
            Ok(payload) => payload,
            Err(reason) => {
                if let Some(next) =
                    (at + 1..bytes.len()).find(|&p| valid_record_at(bytes, p).is_ok())
                {
                    return Err(corrupt(
                        at,
                        format!("{reason}, yet a valid record follows at offset {next}"),
                    ));
                }
                return Ok(ScanEnd {
                    valid_end: at as u64,
                    torn_bytes: (bytes.len() - at) as u64,
                });
            }
        };
        let record: Record = serde_json::from_slice(payload)
            .map_err(|e| corrupt(at, format!("the record does not decode: {e}")))?;
        visit(at as u64, record)?;
        at += RECORD_HEADER_BYTES + payload.len();
    }
    Ok(ScanEnd {
        valid_end: at as u64,
        torn_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = header().to_vec();
        for record in records {
            bytes.extend_from_slice(record);
        }
        bytes
    }

    fn seqs(bytes: &[u8]) -> Result<(Vec<u64>, ScanEnd), RegistryError> {
        let mut seen = Vec::new();
        let end = scan(Path::new("log.1"), bytes, |_, r| {
            seen.push(r.seq);
            Ok(())
        })?;
        Ok((seen, end))
    }

    #[test]
    fn records_round_trip() {
        let snapshot = snapshot_record(0, &RegistrySnapshot::default()).expect("encodes");
        let batch = batches_record(1, &[br#"[{"op":"started"}]"#, b"[]"]);
        let bytes = file(&[snapshot, batch]);
        let (seen, end) = seqs(&bytes).expect("scans");
        assert_eq!(seen, vec![0, 1]);
        assert_eq!(end.valid_end, bytes.len() as u64);
        assert_eq!(end.torn_bytes, 0);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let snapshot = snapshot_record(0, &RegistrySnapshot::default()).expect("encodes");
        let full = file(&[
            snapshot.clone(),
            batches_record(1, &[br#"[{"op":"started"}]"#]),
        ]);
        let base = HEADER_BYTES + snapshot.len();
        for cut in base..full.len() {
            let (seen, end) = seqs(&full[..cut]).expect("a cut is torn, not corrupt");
            assert_eq!(seen, vec![0]);
            assert_eq!(end.valid_end, base as u64);
        }
    }

    #[test]
    fn a_damaged_record_before_a_valid_one_is_corruption() {
        let snapshot = snapshot_record(0, &RegistrySnapshot::default()).expect("encodes");
        let one = batches_record(1, &[br#"[{"op":"started"}]"#]);
        let two = batches_record(2, &[br#"[{"op":"started"}]"#]);
        let mut bytes = file(&[snapshot.clone(), one, two]);
        let target = HEADER_BYTES + snapshot.len() + RECORD_HEADER_BYTES + 3;
        bytes[target] ^= 0x40;
        match seqs(&bytes) {
            Err(RegistryError::Corrupt { offset, .. }) => {
                assert_eq!(offset, (HEADER_BYTES + snapshot.len()) as u64);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_torn() {
        let snapshot = snapshot_record(0, &RegistrySnapshot::default()).expect("encodes");
        let mut bytes = file(&[snapshot]);
        let valid = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 4096]);
        let (_, end) = seqs(&bytes).expect("torn");
        assert_eq!(end.valid_end, valid);
        assert_eq!(end.torn_bytes, 4096);
    }

    #[test]
    fn bad_headers_and_versions_are_refused() {
        assert!(matches!(
            seqs(b"not a registry at all"),
            Err(RegistryError::Corrupt { offset: 0, .. })
        ));
        let mut bytes = header().to_vec();
        bytes[8] = 9;
        assert!(matches!(
            seqs(&bytes),
            Err(RegistryError::Version { found: 9, .. })
        ));
    }
}
