//! The sandbox garbage-collection loop ([`crate::gc`]): every `--disk_watch_interval` it finds
//! the run sandboxes under the work dir, the ones still in use (running command tasks, tasks
//! this process launched until their end is acknowledged, custom executors), and deletes
//! those that ended `--gc_delay` ago (less as the disk fills).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{lock, Node};
use crate::gc::{self, SandboxGc};

/// Runs until the agent stops.
pub(super) async fn run(node: Arc<Node>) {
    let mut schedule = SandboxGc::new(node.config.gc);
    let mut ticks = tokio::time::interval(node.config.disk_watch_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if node.runtime().is_none() {
            continue;
        }
        let worker = Arc::clone(&node);
        let pass = tokio::task::spawn_blocking(move || {
            worker.collect(&mut schedule);
            schedule
        })
        .await;
        match pass {
            Ok(kept) => schedule = kept,
            Err(e) => {
                tracing::error!(error = %e, "sandbox collection panicked");
                return;
            }
        }
    }
}

impl Node {
    /// One pass: touch the runs that just ended, delete the ones due.
    fn collect(&self, schedule: &mut SandboxGc) {
        // Listed before the runs in use are asked for: a run made in between is then in use.
        let runs = gc::find_runs(&self.config.work_dir);
        let in_use = self.sandboxes_in_use();
        let now = SystemTime::now();
        let usage = gc::disk_usage(&self.config.work_dir);
        let pass = schedule.pass(&runs, in_use, now, usage);
        for run in &pass.ended {
            if let Err(e) = gc::touch(run, now) {
                tracing::debug!(run = %run.display(), error = %e, "cannot date the run's end");
            }
        }
        for run in &pass.due {
            match gc::remove_run(run) {
                Ok(()) => tracing::info!(sandbox = %run.display(), "sandbox garbage-collected"),
                Err(e) => tracing::warn!(error = %e, "sandbox not garbage-collected"),
            }
        }
    }

    /// The sandboxes of what runs or is being launched.
    fn sandboxes_in_use(&self) -> BTreeSet<PathBuf> {
        let mut in_use: BTreeSet<PathBuf> = lock(&self.sandboxes).values().cloned().collect();
        if let Some(rt) = self.runtime() {
            in_use.extend(rt.executor.tasks().into_iter().map(|run| run.sandbox));
            in_use.extend(rt.executors.executors().into_iter().map(|e| e.sandbox));
        }
        in_use
    }
}
