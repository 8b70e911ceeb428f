//! A timeline of the launch phase from the master's own metrics (`/metrics/snapshot`, sampled
//! once a second): tasks the master holds as staging and running, the status updates and
//! acknowledgements it has received, next to the TASK_RUNNINGs the frameworks have seen. It
//! splits the launch into its legs — the master launching (RUN_TASK), the agents' updates
//! reaching the master, the updates reaching the frameworks — so a missed throughput target
//! points at the leg that lagged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::frameworks::Book;
use crate::report;

/// How often the master's metrics are read.
const PERIOD: Duration = Duration::from_secs(1);

/// One reading.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the frameworks started.
    pub(crate) secs: f64,
    /// `master/tasks_staging`.
    pub(crate) master_staging: f64,
    /// `master/tasks_running`.
    pub(crate) master_running: f64,
    /// `master/valid_status_updates`.
    pub(crate) status_updates: f64,
    /// `master/valid_status_update_acknowledgements`.
    pub(crate) acknowledgements: f64,
    /// Tasks whose TASK_RUNNING the frameworks have received.
    pub(crate) frameworks_running: usize,
}

/// Samples until the book settles; a failed read is skipped (the run's own checks judge it).
pub(crate) async fn sample(master_url: String, book: Arc<Book>, started: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if book.is_settled() {
            return samples;
        }
        let Ok(metrics) = report::snapshot(&master_url).await else {
            continue;
        };
        let get = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
        samples.push(Sample {
            secs: started.elapsed().as_secs_f64(),
            master_staging: get("master/tasks_staging"),
            master_running: get("master/tasks_running"),
            status_updates: get("master/valid_status_updates"),
            acknowledgements: get("master/valid_status_update_acknowledgements"),
            frameworks_running: book.records().running_latencies.len(),
        });
    }
}

/// When (seconds since the frameworks started) the master first held every task (staging or
/// running) and first saw every task running, if it did while sampled.
pub(crate) fn milestones(samples: &[Sample], total: usize) -> (Option<f64>, Option<f64>) {
    #[allow(clippy::cast_precision_loss)] // task counts are far below 2^52.
    let total = total as f64;
    let launched = samples
        .iter()
        .find(|s| s.master_staging + s.master_running >= total)
        .map(|s| s.secs);
    let running = samples
        .iter()
        .find(|s| s.master_running >= total)
        .map(|s| s.secs);
    (launched, running)
}
