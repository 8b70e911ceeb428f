//! The block request model: what one ublk I/O descriptor asks for, decoded and validated.
//!
//! Pure: no kernel, no I/O. `Request::decode` takes the three fields of a `ublksrv_io_desc`
//! (op and flags, start sector, sector count) and either returns a request that is safe to run
//! against a device of the given geometry or says why not, as an errno for the kernel.
//! Constants mirror `include/uapi/linux/ublk_cmd.h`; they are ABI and never change.

use thiserror::Error;

/// Bytes per sector in every ublk descriptor, whatever the device's logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;

const OP_READ: u8 = 0;
const OP_WRITE: u8 = 1;
const OP_FLUSH: u8 = 2;
const OP_DISCARD: u8 = 3;
const OP_WRITE_ZEROES: u8 = 5;
const FLAG_FUA: u32 = 1 << 13;
const FLAG_NOUNMAP: u32 = 1 << 15;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read `len` bytes at `offset` into the request's buffer.
    Read,
    /// Write `len` bytes from the request's buffer at `offset`. A write of length zero is a
    /// bare cache flush (the kernel sends those as data-less writes carrying PREFLUSH).
    Write,
    /// Make every write completed before this request durable.
    Flush,
    /// The range's contents may be dropped; it reads back as zeroes afterwards.
    Discard,
    /// The range must read back as zeroes.
    WriteZeroes,
}

impl Op {
    /// A short lower-case name for logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
        }
    }
}

/// One decoded block request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// Byte offset on the device (zero for FLUSH).
    pub offset: u64,
    /// Byte length (zero for FLUSH).
    pub len: u32,
    /// Forced unit access: the write is durable before it completes.
    pub fua: bool,
    /// For WRITE_ZEROES: keep the range allocated rather than unmapping it.
    pub no_unmap: bool,
}

impl Request {
    /// Whether this request only asks for durability of earlier writes: a FLUSH or a data-less
    /// write (a PREFLUSH the block layer did not split off).
    pub fn is_flush(&self) -> bool {
        self.op == Op::Flush || (self.op == Op::Write && self.len == 0)
    }

    /// The exclusive end offset of the byte range this request touches.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The geometry a request is validated against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Device size in bytes; a multiple of `logical_block_size`.
    pub size: u64,
    /// Logical block size in bytes (a power of two, 512..=4096).
    pub logical_block_size: u32,
    /// Largest read or write the device accepts, in bytes (the I/O buffer size).
    pub max_io_bytes: u32,
}

/// Why a descriptor could not be turned into a request. Each maps to the errno the kernel gets.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The op code is not one this device serves (zoned ops, WRITE_SAME, unknown values).
    #[error("unsupported op code {0}")]
    UnsupportedOp(u8),
    /// The range runs past the end of the device.
    #[error("range {offset}+{len} is beyond the device end {size}")]
    OutOfRange {
        /// Requested byte offset.
        offset: u64,
        /// Requested byte length.
        len: u64,
        /// Device size in bytes.
        size: u64,
    },
    /// The range is not aligned to the logical block size.
    #[error("range {offset}+{len} is not aligned to {block} bytes")]
    Misaligned {
        /// Requested byte offset.
        offset: u64,
        /// Requested byte length.
        len: u64,
        /// The logical block size.
        block: u32,
    },
    /// A read or write longer than the I/O buffer.
    #[error("{len} bytes exceed the {max} byte I/O buffer")]
    TooLarge {
        /// Requested byte length.
        len: u64,
        /// The buffer size.
        max: u32,
    },
}

impl DecodeError {
    /// The positive errno the kernel should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::UnsupportedOp(_) => libc::EOPNOTSUPP,
            DecodeError::OutOfRange { .. } => libc::EIO,
            DecodeError::Misaligned { .. } | DecodeError::TooLarge { .. } => libc::EINVAL,
        }
    }
}

/// Whether `offset` and `len` are multiples of `block`. Block sizes are powers of two, where a
/// mask replaces two 64-bit divisions per request (a helper call each in an emulated guest).
fn is_aligned(offset: u64, len: u64, block: u32) -> bool {
    let block = u64::from(block);
    if block.is_power_of_two() {
        (offset | len) & (block - 1) == 0
    } else {
        offset % block == 0 && len % block == 0
    }
}

impl Request {
    /// Decodes a ublk I/O descriptor's fields against a device geometry.
    pub fn decode(
        op_flags: u32,
        start_sector: u64,
        nr_sectors: u32,
        geometry: &Geometry,
    ) -> Result<Request, DecodeError> {
        let op = match (op_flags & 0xff) as u8 {
            OP_READ => Op::Read,
            OP_WRITE => Op::Write,
            OP_FLUSH => Op::Flush,
            OP_DISCARD => Op::Discard,
            OP_WRITE_ZEROES => Op::WriteZeroes,
            other => return Err(DecodeError::UnsupportedOp(other)),
        };
        let fua = op_flags & FLAG_FUA != 0;
        let no_unmap = op_flags & FLAG_NOUNMAP != 0;
        if op == Op::Flush {
            return Ok(Request {
                op,
                offset: 0,
                len: 0,
                fua: false,
                no_unmap: false,
            });
        }
        let offset = start_sector
            .checked_shl(SECTOR_SHIFT)
            .filter(|o| o >> SECTOR_SHIFT == start_sector);
        let len = u64::from(nr_sectors) << SECTOR_SHIFT;
        let out_of_range = || DecodeError::OutOfRange {
            offset: start_sector,
            len,
            size: geometry.size,
        };
        let offset = offset.ok_or_else(out_of_range)?;
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > geometry.size {
            return Err(DecodeError::OutOfRange {
                offset,
                len,
                size: geometry.size,
            });
        }
        if !is_aligned(offset, len, geometry.logical_block_size) {
            return Err(DecodeError::Misaligned {
                offset,
                len,
                block: geometry.logical_block_size,
            });
        }
        let is_data = matches!(op, Op::Read | Op::Write);
        if is_data && len > u64::from(geometry.max_io_bytes) {
            return Err(DecodeError::TooLarge {
                len,
                max: geometry.max_io_bytes,
            });
        }
        // Discard and write-zeroes lengths are capped by the limits we declared to the kernel,
        // which fit in u32 sectors; data ops were just bounded by the buffer size.
        let len = u32::try_from(len).map_err(|_| DecodeError::TooLarge { len, max: u32::MAX })?;
        Ok(Request {
            op,
            offset,
            len,
            fua,
            no_unmap,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GEO: Geometry = Geometry {
        size: 1 << 30,
        logical_block_size: 4096,
        max_io_bytes: 1 << 20,
    };

    #[test]
    fn decodes_a_fua_write() {
        let req = Request::decode(u32::from(OP_WRITE) | FLAG_FUA, 8, 16, &GEO).unwrap();
        assert_eq!(
            req,
            Request {
                op: Op::Write,
                offset: 4096,
                len: 8192,
                fua: true,
                no_unmap: false
            }
        );
        assert!(!req.is_flush());
    }

    #[test]
    fn data_less_write_is_a_flush() {
        let req = Request::decode(u32::from(OP_WRITE), 0, 0, &GEO).unwrap();
        assert!(req.is_flush());
    }

    #[test]
    fn flush_ignores_its_range_fields() {
        let req = Request::decode(u32::from(OP_FLUSH), 123, 7, &GEO).unwrap();
        assert_eq!(req.op, Op::Flush);
        assert_eq!((req.offset, req.len), (0, 0));
    }

    #[test]
    fn write_zeroes_keeps_nounmap() {
        let req = Request::decode(u32::from(OP_WRITE_ZEROES) | FLAG_NOUNMAP, 0, 8, &GEO).unwrap();
        assert!(req.no_unmap);
    }

    #[test]
    fn rejects_what_the_device_does_not_serve() {
        assert_eq!(
            Request::decode(4, 0, 8, &GEO),
            Err(DecodeError::UnsupportedOp(4))
        );
        assert_eq!(
            Request::decode(13, 0, 8, &GEO).unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        let past_end = Request::decode(0, (1 << 30) >> 9, 8, &GEO).unwrap_err();
        assert_eq!(past_end.errno(), libc::EIO);
        assert_eq!(
            Request::decode(0, 1, 8, &GEO).unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            Request::decode(1, 0, 4096, &GEO).unwrap_err().errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn alignment_by_mask_agrees_with_division() {
        for block in [512u32, 1024, 4096, 520, 3000] {
            for (offset, len) in [(0, 0), (4096, 8192), (512, 4096), (1040, 520), (6000, 3000)] {
                let expected = offset % u64::from(block) == 0 && len % u64::from(block) == 0;
                assert_eq!(
                    is_aligned(offset, len, block),
                    expected,
                    "{offset} {len} {block}"
                );
            }
        }
    }

    #[test]
    fn discard_may_exceed_the_io_buffer() {
        let req = Request::decode(u32::from(OP_DISCARD), 0, 1 << 16, &GEO).unwrap();
        assert_eq!(req.len, 32 << 20);
    }

    proptest! {
        /// Whatever the kernel hands us, decoding never panics, and an accepted request always
        /// lies inside the device on block boundaries.
        #[test]
        fn accepted_requests_are_inside_the_device(op_flags: u32, start: u64, sectors: u32) {
            if let Ok(req) = Request::decode(op_flags, start, sectors, &GEO) {
                prop_assert!(req.end() <= GEO.size);
                prop_assert_eq!(req.offset % 4096, 0);
                prop_assert_eq!(req.len % 4096, 0);
                if matches!(req.op, Op::Read | Op::Write) {
                    prop_assert!(req.len <= GEO.max_io_bytes);
                }
            }
        }
    }
}
