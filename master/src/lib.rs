//! mesoblk-master: the elected master that tracks agents' resources and offers them to frameworks
//! with DRF, speaking the Mesos v1 scheduler and operator HTTP APIs.
//!
//! This crate never depends on `ublk-target`: the master knows block storage only as Mesos disk
//! resources reported by agents. It is being built under issue #5; nothing is exported yet.

#![forbid(unsafe_code)]
