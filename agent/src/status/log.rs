//! The on-disk format of a task's status-update log (pure encoding and decoding).
//!
//! A log is a sequence of records, each framed as
//!
//! ```text
//! [payload length: u32 LE][CRC-32 (IEEE) of the payload: u32 LE][payload]
//! ```
//!
//! and the payload's first byte is its kind:
//!
//! - `0` header: the magic `mesoblk-status-v1`, then the framework id and the task id, each as a
//!   u32 LE length and UTF-8 bytes. Always the first record, written and fsynced when the file
//!   is created, before any update;
//! - `1` update: a `mesos.v1.TaskStatus` in protobuf;
//! - `2` acknowledgement: the 16-byte uuid of the acknowledged update.
//!
//! Records are only ever appended (each followed by fsync) or the whole file is replaced
//! atomically (compaction), so the only damage a crash can do is a torn last record: decoding
//! stops at the first frame that is short, too long, or fails its checksum, and reports how
//! many bytes were good.

use mesoblk_proto::mesos::v1::TaskStatus;
use prost::Message;

use super::update::UpdateUuid;

/// The header's magic.
pub const MAGIC: &[u8] = b"mesoblk-status-v1";

/// The largest payload accepted (a `TaskStatus` may carry executor `data`).
pub const MAX_PAYLOAD: usize = 16 << 20;

const FRAME_HEADER: usize = 8;
const KIND_HEADER: u8 = 0;
const KIND_UPDATE: u8 = 1;
const KIND_ACK: u8 = 2;

/// One record of a log.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The file's header.
    Header {
        /// The framework.
        framework_id: String,
        /// The task.
        task_id: String,
    },
    /// A status update, persisted before it was sent.
    Update(Box<TaskStatus>),
    /// The acknowledgement of the update with this uuid.
    Ack(UpdateUuid),
}

/// A record whose frame is intact but whose payload does not decode (a bug or bit rot, not a
/// crash).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record at offset {offset}: {reason}")]
pub struct BadRecord {
    /// Where the record starts.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// What decoding a log found.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The intact records, in order.
    pub records: Vec<Record>,
    /// How many bytes they take: anything after is a torn tail.
    pub good_len: usize,
}

/// CRC-32 with the IEEE polynomial (reflected 0xEDB88320), as zlib and Ethernet compute it.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = u32::MAX;
    for &b in bytes {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// Encodes one record with its frame.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut payload = Vec::new();
    match record {
        Record::Header {
            framework_id,
            task_id,
        } => {
            payload.push(KIND_HEADER);
            payload.extend_from_slice(MAGIC);
            for s in [framework_id, task_id] {
                let len = u32::try_from(s.len()).expect("ids are far shorter than 4 GiB");
                payload.extend_from_slice(&len.to_le_bytes());
                payload.extend_from_slice(s.as_bytes());
            }
        }
        Record::Update(status) => {
            payload.push(KIND_UPDATE);
            status.encode(&mut payload).expect("a Vec grows as needed");
        }
        Record::Ack(uuid) => {
            payload.push(KIND_ACK);
            payload.extend_from_slice(uuid);
        }
    }
    assert!(payload.len() <= MAX_PAYLOAD, "status update too large");
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a whole log; stops at a torn tail (see the module docs).
pub fn decode(bytes: &[u8]) -> Result<Decoded, BadRecord> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(payload) = frame_at(bytes, at) {
        records.push(decode_payload(payload).map_err(|reason| BadRecord { offset: at, reason })?);
        at += FRAME_HEADER + payload.len();
    }
    debug_assert!(at <= bytes.len());
    Ok(Decoded {
        records,
        good_len: at,
    })
}

/// The payload of the intact frame at `at`, if there is one.
fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at.checked_add(FRAME_HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
    (crc32(payload) == crc).then_some(payload)
}

fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let (kind, body) = payload.split_first().ok_or("empty record")?;
    match *kind {
        KIND_HEADER => {
            let rest = body.strip_prefix(MAGIC).ok_or("bad magic")?;
            let (framework_id, rest) = take_string(rest)?;
            let (task_id, rest) = take_string(rest)?;
            if !rest.is_empty() {
                return Err("trailing bytes after the header".into());
            }
            Ok(Record::Header {
                framework_id,
                task_id,
            })
        }
        KIND_UPDATE => TaskStatus::decode(body)
            .map(|s| Record::Update(Box::new(s)))
            .map_err(|e| format!("undecodable TaskStatus: {e}")),
        KIND_ACK => body
            .try_into()
            .map(Record::Ack)
            .map_err(|_| format!("acknowledgement of {} bytes, not 16", body.len())),
        other => Err(format!("unknown record kind {other}")),
    }
}

fn take_string(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let len_bytes = bytes.get(..4).ok_or("short string length")?;
    let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
    let s = bytes.get(4..4 + len).ok_or("short string")?;
    let s = String::from_utf8(s.to_vec()).map_err(|_| "id is not UTF-8")?;
    Ok((s, &bytes[4 + len..]))
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::task_status::Source;
    use mesoblk_proto::mesos::v1::TaskState;
    use proptest::prelude::*;

    use super::*;
    use crate::status::update::NewStatus;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn sample() -> Vec<Record> {
        let status = NewStatus::new("t/1", TaskState::TaskRunning, Source::Executor)
            .message("running")
            .build(std::time::SystemTime::now());
        vec![
            Record::Header {
                framework_id: "fw".into(),
                task_id: "t/1".into(),
            },
            Record::Update(Box::new(status)),
            Record::Ack([7; 16]),
        ]
    }

    #[test]
    fn records_round_trip() {
        let records = sample();
        let bytes: Vec<u8> = records.iter().flat_map(encode).collect();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.records, records);
        assert_eq!(decoded.good_len, bytes.len());
    }

    proptest! {
        /// Cutting or damaging the last record loses exactly that record.
        #[test]
        fn torn_tails_are_cut_off(cut in 1usize..40, flip in any::<bool>()) {
            let records = sample();
            let whole: Vec<u8> = records.iter().flat_map(encode).collect();
            let last_len = encode(&records[2]).len();
            let prefix = whole.len() - last_len;
            let mut torn = whole.clone();
            if flip {
                let i = prefix + (cut % last_len);
                torn[i] ^= 0x5A;
            } else {
                torn.truncate(whole.len() - cut.min(last_len));
            }
            let decoded = decode(&torn).unwrap();
            prop_assert_eq!(decoded.good_len, prefix);
            prop_assert_eq!(&decoded.records[..], &records[..2]);
        }
    }

    #[test]
    fn intact_but_undecodable_records_are_errors() {
        let payload = [9u8, 1, 2];
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(err.reason.contains("unknown record kind 9"));
    }
}
