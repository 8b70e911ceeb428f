//! What `block-bench` asks each task to run and what the executor sends back, as JSON: the
//! job travels in `TaskInfo.data`, the result in a framework message.

use serde::{Deserialize, Serialize};

/// An fio job against the task's block device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    /// fio's `--rw` (randread, randwrite, randrw, read, write).
    pub(crate) rw: String,
    /// fio's `--bs`, e.g. `4k`.
    pub(crate) bs: String,
    /// fio's `--iodepth`.
    pub(crate) iodepth: u32,
    /// Seconds to run.
    pub(crate) runtime_secs: u32,
}

/// One direction's figures.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Figures {
    pub(crate) iops: f64,
    pub(crate) bandwidth_kib: f64,
    pub(crate) p99_latency_us: f64,
}

/// What one task measured on its device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobResult {
    pub(crate) task_id: String,
    pub(crate) device: String,
    pub(crate) read: Figures,
    pub(crate) write: Figures,
}
