//! mesoblk-agent: runs on every machine, reports its cpus, mem, ports and block pools to the
//! master, runs tasks, and provisions a ublk device per task through `ublk-target`.
//!
//! Being built under issue #6. So far: [`storage`] (block pools, profiles, volumes and the ublk
//! devices attached to tasks).

#![forbid(unsafe_code)]

pub mod storage;
