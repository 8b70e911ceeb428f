//! Kernel glue: the only module of the workspace allowed to use `unsafe`.
//!
//! Everything that talks to the ublk driver (through libublk) or pushes raw io_uring SQEs lives
//! here, so the rest of the crate (request model, engine, backends, configuration) is plain safe
//! Rust that runs and is tested without ublk in the kernel. Each `unsafe` block carries a
//! `// SAFETY:` comment naming the invariant that makes it sound.

pub mod control;
pub mod device;
pub mod fixed;
pub mod probe;
pub mod ring;
pub mod shm;
pub mod taskrun;
