//! mesoblk-framework: the `Scheduler`/`SchedulerDriver` and `Executor`/`ExecutorDriver` libraries
//! for writing Mesos frameworks in Rust. The driver core speaks plain Mesos v1.
//!
//! Being built under issue #7; nothing is exported yet.

#![forbid(unsafe_code)]
