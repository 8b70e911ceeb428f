//! The bench's framework: launches command tasks that each take one slice of a profile's RAW
//! pool as a BLOCK device, and keeps the books of each launch's timestamps: the ACCEPT sent,
//! TASK_RUNNING received, and the task's own first 4k direct read of its device done: `dd` copies
//! the block it read to `<ready dir>/<task id>`, and that file's modification time, once it holds
//! the whole block, is when the read was done (the read's own process writes it, so no further
//! process start is counted). A task is *usable* when both of the last two happened. At most
//! `in_flight` launches are unusable at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use mesoblk_framework::block;
use mesoblk_framework::operations::{refuse_seconds, scalar};
use mesoblk_framework::proto::mesos::v1::{
    CommandInfo, FrameworkId, MasterInfo, Offer, TaskId, TaskInfo, TaskState, TaskStatus,
};
use mesoblk_framework::proto::task_state::is_terminal;
use mesoblk_framework::scheduler::{Scheduler, SchedulerDriver};

/// How offers not used are declined: briefly, so the next launch finds one at once.
const REFUSE_SECS: f64 = 0.05;

/// What each task is given and how many run at once.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) task_prefix: String,
    pub(crate) tasks: usize,
    pub(crate) size_mb: f64,
    pub(crate) profile: String,
    pub(crate) in_flight: usize,
    pub(crate) ready_dir: PathBuf,
    pub(crate) task_cpus: f64,
    pub(crate) task_mem: f64,
}

/// One task's timestamps.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) accepted: SystemTime,
    pub(crate) running: Option<SystemTime>,
    pub(crate) read_done: Option<SystemTime>,
    pub(crate) end: Option<TaskState>,
}

impl Launch {
    pub(crate) fn usable(&self) -> Option<SystemTime> {
        Some(self.running?.max(self.read_done?))
    }
}

/// Shared between the driver's callbacks and the bench's main loop.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub(crate) launches: BTreeMap<String, Launch>,
    /// The first thing that went wrong (a refused call, a task ending early).
    pub(crate) failure: Option<String>,
    /// Set once every task is usable: ends are expected from then on.
    pub(crate) stopping: bool,
}

impl Book {
    fn unusable(&self) -> usize {
        self.launches
            .values()
            .filter(|l| l.usable().is_none())
            .count()
    }

    pub(crate) fn all_usable(&self, tasks: usize) -> bool {
        self.launches.len() == tasks && self.unusable() == 0
    }

    pub(crate) fn all_ended(&self) -> bool {
        self.launches.values().all(|l| l.end.is_some())
    }

    fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    /// Reads the ready files of running tasks whose read time is not known yet.
    pub(crate) fn collect_reads(&mut self, ready_dir: &Path) {
        for (id, launch) in &mut self.launches {
            if launch.read_done.is_none() && launch.running.is_some() {
                launch.read_done = read_stamp(&ready_dir.join(id));
            }
        }
    }
}

/// When the task's `dd` wrote the block it read; `None` while the file is missing or short.
fn read_stamp(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() != BLOCK_BYTES {
        return None;
    }
    meta.modified().ok()
}

/// What the task reads, and copies to its ready file.
const BLOCK_BYTES: u64 = 4096;

pub(crate) type SharedBook = Arc<Mutex<Book>>;

pub(crate) fn lock(book: &SharedBook) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Provisioner {
    pub(crate) plan: Plan,
    pub(crate) book: SharedBook,
}

impl Provisioner {
    /// The task's command: its first action reads 4k of the device past the page cache and
    /// copies them to its ready file.
    fn command(&self, id: &str) -> String {
        format!(
            "dd if=\"$MESOBLK_BLOCK_DEVICE\" of={ready} bs={BLOCK_BYTES} count=1 iflag=direct \
             status=none && exec sleep 1000000",
            ready = self.plan.ready_dir.join(id).display()
        )
    }

    fn task(
        &self,
        offer: &Offer,
        slice: &mesoblk_framework::proto::mesos::v1::Resource,
        id: String,
    ) -> TaskInfo {
        TaskInfo {
            name: id.clone(),
            command: Some(CommandInfo {
                value: Some(self.command(&id)),
                shell: Some(true),
                ..CommandInfo::default()
            }),
            task_id: TaskId { value: id },
            agent_id: offer.agent_id.clone(),
            resources: vec![
                scalar("cpus", self.plan.task_cpus),
                scalar("mem", self.plan.task_mem),
                block::task_disk(slice, None),
            ],
            ..TaskInfo::default()
        }
    }

    /// Tasks for `offer`, within the in-flight limit; their ACCEPT time is booked now.
    fn tasks_for(&self, offer: &Offer) -> Vec<TaskInfo> {
        let mut book = lock(&self.book);
        let left = self.plan.tasks - book.launches.len();
        let room = self.plan.in_flight.saturating_sub(book.unusable());
        let slices =
            block::raw_slices(offer, &self.plan.profile, self.plan.size_mb, left.min(room));
        let mut tasks = Vec::new();
        for slice in slices {
            let id = format!("{}-{:04}", self.plan.task_prefix, book.launches.len() + 1);
            tasks.push(self.task(offer, &slice, id.clone()));
            let launch = Launch {
                accepted: SystemTime::now(),
                running: None,
                read_done: None,
                end: None,
            };
            book.launches.insert(id, launch);
        }
        tasks
    }
}

impl Scheduler for Provisioner {
    async fn registered(&mut self, _: &SchedulerDriver, id: &FrameworkId, _: Option<&MasterInfo>) {
        tracing::info!(framework = %id.value, "registered");
    }

    async fn resource_offers(&mut self, driver: &SchedulerDriver, offers: Vec<Offer>) {
        for offer in offers {
            let tasks = self.tasks_for(&offer);
            let filters = Some(refuse_seconds(REFUSE_SECS));
            let result = if tasks.is_empty() {
                driver.decline(vec![offer.id], filters).await
            } else {
                driver.launch_tasks(vec![offer.id], tasks, filters).await
            };
            if let Err(e) = result {
                lock(&self.book).fail(format!("the master refused a call: {e}"));
            }
        }
    }

    async fn status_update(&mut self, _: &SchedulerDriver, status: &TaskStatus) {
        let now = SystemTime::now();
        let mut book = lock(&self.book);
        let stopping = book.stopping;
        let Some(launch) = book.launches.get_mut(&status.task_id.value) else {
            return;
        };
        let state = status.state();
        if state == TaskState::TaskRunning {
            launch.running.get_or_insert(now);
        } else if is_terminal(state) {
            launch.end = Some(state);
            if !stopping {
                let why = format!(
                    "{} ended early: {} {}",
                    status.task_id.value,
                    state.as_str_name(),
                    status.message.as_deref().unwrap_or("")
                );
                book.fail(why);
            }
        }
    }

    async fn error(&mut self, _: &SchedulerDriver, message: &str) {
        lock(&self.book).fail(format!("the master ended the framework: {message}"));
    }
}
