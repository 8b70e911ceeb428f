//! The request engine: runs one decoded request against a backend and produces the result the
//! kernel expects for it.
//!
//! Result convention (ublk's): a read or write returns the number of bytes transferred, FLUSH,
//! DISCARD and WRITE_ZEROES return 0, and any failure returns `-errno`. Every request gets an
//! answer; errors are logged with their context here, once.

use crate::backend::Backend;
use crate::request::{Op, Request};

/// Executes `req` against `backend`. `buf` is the request's I/O buffer (at least `req.len`
/// bytes for reads and writes).
pub async fn execute<B: Backend>(backend: &B, req: &Request, buf: &mut [u8]) -> i32 {
    let len = req.len as usize;
    let outcome = match req.op {
        // A data-less write is the block layer's PREFLUSH without a payload.
        _ if req.is_flush() => backend.flush().await,
        Op::Read => backend.read(req.offset, &mut buf[..len]).await,
        Op::Write => backend.write(req.offset, &buf[..len], req.fua).await,
        Op::Discard => backend.discard(req.offset, u64::from(req.len)).await,
        Op::WriteZeroes => {
            backend
                .write_zeroes(req.offset, u64::from(req.len), !req.no_unmap)
                .await
        }
        Op::Flush => unreachable!("is_flush covers Op::Flush"),
    };
    match outcome {
        Ok(()) if matches!(req.op, Op::Read | Op::Write) => {
            i32::try_from(req.len).expect("I/O length is bounded by the I/O buffer size")
        }
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(error = %e, "request failed");
            -e.errno
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::RamBackend;
    use smol::block_on;

    fn req(op: Op, offset: u64, len: u32) -> Request {
        Request {
            op,
            offset,
            len,
            fua: false,
            no_unmap: false,
        }
    }

    #[test]
    fn results_follow_the_ublk_convention() {
        let ram = RamBackend::new(1 << 20);
        let mut buf = vec![7u8; 8192];
        assert_eq!(
            block_on(execute(&ram, &req(Op::Write, 4096, 8192), &mut buf)),
            8192
        );
        assert_eq!(block_on(execute(&ram, &req(Op::Flush, 0, 0), &mut buf)), 0);
        assert_eq!(block_on(execute(&ram, &req(Op::Write, 0, 0), &mut buf)), 0);
        assert_eq!(
            block_on(execute(&ram, &req(Op::Discard, 4096, 4096), &mut buf)),
            0
        );
        let mut out = vec![1u8; 8192];
        assert_eq!(
            block_on(execute(&ram, &req(Op::Read, 4096, 8192), &mut out)),
            8192
        );
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert!(out[4096..].iter().all(|&b| b == 7));
    }

    #[test]
    fn backend_errors_become_negative_errnos() {
        let ram = RamBackend::new(4096);
        let mut buf = vec![0u8; 8192];
        assert_eq!(
            block_on(execute(&ram, &req(Op::Read, 0, 8192), &mut buf)),
            -libc::EIO
        );
    }
}
