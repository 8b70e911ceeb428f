//! RecordIO, the framing of Mesos's event streams (`docs/recordio.md`):
//! `record = 1*DIGIT LF <that many bytes>`, the length a decimal `u64`, never zero for a message.
//!
//! [`encode`] frames one record; [`Decoder`] splits a byte stream back into records, bounding the
//! size of a record and of its length prefix so a hostile stream cannot make it allocate without
//! limit.

/// Frames one record: its decimal length, a newline, the bytes.
pub fn encode(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 21);
    out.extend_from_slice(record.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record);
    out
}

/// Why a stream is not valid RecordIO.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordIoError {
    /// The length prefix holds something other than decimal digits.
    #[error("record length is not a decimal number: {0:?}")]
    BadLength(String),
    /// The length is larger than the decoder accepts.
    #[error("record of {length} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        length: u64,
        /// The decoder's limit.
        max: u64,
    },
}

/// Longest accepted length prefix: `u64::MAX` has 20 digits.
const LENGTH_DIGITS_MAX: usize = 20;

/// Incremental RecordIO decoder.
#[derive(Debug)]
pub struct Decoder {
    buffer: Vec<u8>,
    record_bytes_max: u64,
}

impl Decoder {
    /// A decoder that rejects records longer than `record_bytes_max`.
    pub fn new(record_bytes_max: u64) -> Self {
        Decoder {
            buffer: Vec::new(),
            record_bytes_max,
        }
    }

    /// Appends `data` and returns every record completed by it, in order. After an error the
    /// stream is unusable.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, RecordIoError> {
        self.buffer.extend_from_slice(data);
        let mut records = Vec::new();
        loop {
            let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') else {
                if self.buffer.len() > LENGTH_DIGITS_MAX {
                    let prefix = String::from_utf8_lossy(&self.buffer[..LENGTH_DIGITS_MAX]);
                    return Err(RecordIoError::BadLength(prefix.into_owned()));
                }
                return Ok(records);
            };
            let digits = &self.buffer[..newline];
            if digits.is_empty()
                || digits.len() > LENGTH_DIGITS_MAX
                || !digits.iter().all(u8::is_ascii_digit)
            {
                return Err(RecordIoError::BadLength(
                    String::from_utf8_lossy(digits).into_owned(),
                ));
            }
            let length: u64 = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    RecordIoError::BadLength(String::from_utf8_lossy(digits).into_owned())
                })?;
            if length > self.record_bytes_max {
                return Err(RecordIoError::TooLarge {
                    length,
                    max: self.record_bytes_max,
                });
            }
            let start = newline + 1;
            // `length <= record_bytes_max`, which fits in memory by the caller's choice.
            let end = start + usize::try_from(length).unwrap_or(usize::MAX - start);
            if self.buffer.len() < end {
                return Ok(records);
            }
            records.push(self.buffer[start..end].to_vec());
            self.buffer.drain(..end);
        }
    }

    /// Bytes received but not yet part of a complete record.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn frames_with_decimal_length() {
        assert_eq!(
            encode(b"{\"type\":\"HEARTBEAT\"}"),
            b"20\n{\"type\":\"HEARTBEAT\"}".to_vec()
        );
    }

    #[test]
    fn rejects_garbage_and_oversized_lengths() {
        assert!(matches!(
            Decoder::new(100).feed(b"x1\nab"),
            Err(RecordIoError::BadLength(_))
        ));
        assert!(matches!(
            Decoder::new(100).feed(b"\nab"),
            Err(RecordIoError::BadLength(_))
        ));
        assert_eq!(
            Decoder::new(100).feed(b"101\n"),
            Err(RecordIoError::TooLarge {
                length: 101,
                max: 100
            })
        );
        assert!(Decoder::new(100).feed(&[b'1'; 30]).is_err());
    }

    proptest! {
        #[test]
        fn decodes_any_split_of_encoded_records(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..8),
            split in 1usize..17,
        ) {
            let stream: Vec<u8> = records.iter().flat_map(|r| encode(r)).collect();
            let mut decoder = Decoder::new(1024);
            let mut decoded = Vec::new();
            for chunk in stream.chunks(split) {
                decoded.extend(decoder.feed(chunk).expect("valid stream"));
            }
            prop_assert_eq!(decoded, records);
            prop_assert_eq!(decoder.pending(), 0);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Decoder::new(64).feed(&bytes);
        }
    }
}
