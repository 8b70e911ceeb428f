//! The null backend: accepts everything, stores nothing. For benchmarking the ublk path itself.
//! Reads leave the buffer untouched (like the kernel's null_blk), so their content is unspecified.

use super::{Backend, Capabilities, IoError};

/// A backend that completes every request at once without storing data.
#[derive(Clone, Debug)]
pub struct NullBackend {
    size: u64,
}

impl NullBackend {
    /// A null device of `size` bytes.
    pub fn new(size: u64) -> Self {
        NullBackend { size }
    }
}

impl Backend for NullBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            volatile_cache: false,
            logical_block_size: 512,
            stores_data: false,
        }
    }

    async fn read(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), IoError> {
        Ok(())
    }

    async fn write(&self, _offset: u64, _buf: &[u8], _fua: bool) -> Result<(), IoError> {
        Ok(())
    }

    async fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    async fn discard(&self, _offset: u64, _len: u64) -> Result<(), IoError> {
        Ok(())
    }

    async fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<(), IoError> {
        Ok(())
    }
}
