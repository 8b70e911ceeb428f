//! `volume-demo`: a persistent MOUNT volume that outlives the tasks using it.
//!
//! 1. CREATE_DISK turns a slice of a mesoblk RAW pool into a MOUNT disk (a formatted volume);
//! 2. a writer task mounts it, writes random data and its checksum, and finishes;
//! 3. a reader task mounts the same volume and verifies the checksum;
//! 4. DESTROY_DISK gives the capacity back to the pool.
//!
//! ```text
//! cargo run -p mesoblk-framework --example volume-demo -- --master 127.0.0.1:5050 --profile standard
//! ```
//!
//! Exits 0 when every step worked, 1 (with the reason) otherwise.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use mesoblk_framework::block::{self, DiskKind};
use mesoblk_framework::operations::{refuse_seconds, scalar};
use mesoblk_framework::proto::mesos::v1::{
    AgentId, CommandInfo, FrameworkId, MasterInfo, Offer, OperationState, OperationStatus, TaskId,
    TaskInfo, TaskState, TaskStatus,
};
use mesoblk_framework::proto::task_state::is_terminal;
use mesoblk_framework::scheduler::{framework_info, Scheduler, SchedulerConfig, SchedulerDriver};

/// Creates a persistent volume, writes it in one task, verifies it in the next, destroys it.
#[derive(Parser, Debug)]
#[command(name = "volume-demo")]
struct Args {
    /// The master, `HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:5050")]
    master: String,
    /// The agent's storage profile to take the volume from.
    #[arg(long, default_value = "standard")]
    profile: String,
    /// The volume's size in MB.
    #[arg(long, default_value_t = 128)]
    size_mb: u32,
    /// How much data the writer writes, in MB.
    #[arg(long, default_value_t = 16)]
    data_mb: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The user tasks run as (default: this process's user).
    #[arg(long)]
    user: Option<String>,
}

/// The demo's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    CreateVolume,
    CreatingVolume,
    Write,
    Writing,
    Read,
    Reading,
    DestroyVolume,
    DestroyingVolume,
    Done,
}

struct VolumeDemo {
    args: Args,
    step: Step,
    volume_id: Option<String>,
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
}

impl VolumeDemo {
    async fn finish(&mut self, driver: &SchedulerDriver, result: Result<(), String>) {
        if let Err(e) = &result {
            println!("FAILED: {e}");
        }
        self.step = Step::Done;
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        if let Err(e) = driver.stop(false).await {
            eprintln!("volume-demo: could not tear the framework down: {e}");
        }
    }

    /// The operations to run on `offer` at the current step, if it has what the step needs.
    fn use_offer(
        &mut self,
        offer: &Offer,
    ) -> Option<Vec<mesoblk_framework::proto::mesos::v1::offer::Operation>> {
        match self.step {
            Step::CreateVolume => {
                let slice =
                    block::raw_slices(offer, &self.args.profile, self.args.size_mb.into(), 1)
                        .pop()?;
                println!(
                    "Creating a {} MB MOUNT volume from pool profile {:?} on agent {} (CREATE_DISK).",
                    self.args.size_mb, self.args.profile, offer.hostname
                );
                self.step = Step::CreatingVolume;
                Some(vec![block::create_disk(
                    slice,
                    DiskKind::Mount,
                    "volume-demo-create",
                )])
            }
            Step::Write | Step::Read => {
                let disk = self.our_volume(offer)?;
                let writing = self.step == Step::Write;
                let task = self.task(offer, &disk, writing);
                println!(
                    "Launching the {} task {}; the agent mounts the volume and names it in $MESOBLK_MOUNT_PATH.",
                    if writing { "writer" } else { "reader" },
                    task.task_id.value
                );
                self.step = if writing {
                    Step::Writing
                } else {
                    Step::Reading
                };
                Some(vec![mesoblk_framework::operations::launch(vec![task])])
            }
            Step::DestroyVolume => {
                let disk = self.our_volume(offer)?;
                println!(
                    "Destroying the volume (DESTROY_DISK); its capacity goes back to the pool."
                );
                self.step = Step::DestroyingVolume;
                Some(vec![block::destroy_disk(disk, "volume-demo-destroy")])
            }
            _ => None,
        }
    }

    fn our_volume(&self, offer: &Offer) -> Option<mesoblk_framework::proto::mesos::v1::Resource> {
        let id = self.volume_id.as_deref()?;
        block::created_disks(offer, DiskKind::Mount)
            .find(|d| block::disk_id(d) == Some(id))
            .cloned()
    }

    fn task(
        &self,
        offer: &Offer,
        disk: &mesoblk_framework::proto::mesos::v1::Resource,
        writing: bool,
    ) -> TaskInfo {
        let script = if writing {
            format!(
                "set -e; cd \"$MESOBLK_MOUNT_PATH\"; \
                 head -c {}M /dev/urandom > data; sha256sum data > data.sha256; sync; \
                 echo wrote $(wc -c < data) bytes; cat data.sha256",
                self.args.data_mb
            )
        } else {
            "set -e; cd \"$MESOBLK_MOUNT_PATH\"; ls -l; sha256sum -c data.sha256".to_owned()
        };
        let name = if writing { "writer" } else { "reader" };
        TaskInfo {
            name: format!("volume-demo {name}"),
            task_id: TaskId {
                value: format!("volume-demo-{name}"),
            },
            agent_id: offer.agent_id.clone(),
            resources: vec![
                scalar("cpus", 0.1),
                scalar("mem", 64.0),
                block::task_disk(disk, None),
            ],
            command: Some(CommandInfo {
                value: Some(script),
                ..CommandInfo::default()
            }),
            ..TaskInfo::default()
        }
    }

    async fn task_ended(&mut self, driver: &SchedulerDriver, status: &TaskStatus) {
        let state = status.state();
        let message = status.message.clone().unwrap_or_default();
        println!(
            "  {} is {}{}",
            status.task_id.value,
            state.as_str_name(),
            suffix(&message)
        );
        if state == TaskState::TaskFinished {
            self.step = match self.step {
                Step::Writing => {
                    println!("The writer finished; the volume keeps its data without any task.");
                    Step::Read
                }
                _ => {
                    println!("The reader verified the data written by the writer.");
                    Step::DestroyVolume
                }
            };
            if let Err(e) = driver.revive(Vec::new()).await {
                eprintln!("volume-demo: revive failed: {e}");
            }
        } else {
            let why = format!(
                "task {} ended {}{}",
                status.task_id.value,
                state.as_str_name(),
                suffix(&message)
            );
            self.finish(driver, Err(why)).await;
        }
    }
}

fn suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Scheduler for VolumeDemo {
    async fn registered(&mut self, _: &SchedulerDriver, id: &FrameworkId, _: Option<&MasterInfo>) {
        println!("Registered with the master as framework {}.", id.value);
    }

    async fn resource_offers(&mut self, driver: &SchedulerDriver, offers: Vec<Offer>) {
        for offer in offers {
            let result = match self.use_offer(&offer) {
                Some(operations) => {
                    driver
                        .accept(
                            vec![offer.id.clone()],
                            operations,
                            Some(refuse_seconds(1.0)),
                        )
                        .await
                }
                None => {
                    driver
                        .decline(vec![offer.id.clone()], Some(refuse_seconds(1.0)))
                        .await
                }
            };
            if let Err(e) = result {
                self.finish(driver, Err(format!("the master refused a call: {e}")))
                    .await;
                return;
            }
        }
    }

    async fn operation_status(&mut self, driver: &SchedulerDriver, status: &OperationStatus) {
        let state = status.state();
        println!("  operation is {}", state.as_str_name());
        match (self.step, state) {
            (Step::CreatingVolume, OperationState::OperationFinished) => {
                let created = status
                    .converted_resources
                    .iter()
                    .find_map(|r| block::disk_id(r).map(str::to_owned));
                match created {
                    Some(id) => {
                        println!("Volume {id} is ready (formatted once, at creation).");
                        self.volume_id = Some(id);
                        self.step = Step::Write;
                    }
                    None => {
                        let why = "CREATE_DISK finished without naming the new disk".to_owned();
                        self.finish(driver, Err(why)).await;
                    }
                }
            }
            (Step::DestroyingVolume, OperationState::OperationFinished) => {
                println!("Done: the volume was created, written, read back, and destroyed.");
                self.finish(driver, Ok(())).await;
            }
            (_, OperationState::OperationPending) => {}
            (_, other) => {
                let message = status.message.clone().unwrap_or_default();
                let why = format!(
                    "the operation ended {}{}",
                    other.as_str_name(),
                    suffix(&message)
                );
                self.finish(driver, Err(why)).await;
            }
        }
    }

    async fn status_update(&mut self, driver: &SchedulerDriver, status: &TaskStatus) {
        if is_terminal(status.state()) {
            self.task_ended(driver, status).await;
        } else {
            println!(
                "  {} is {}",
                status.task_id.value,
                status.state().as_str_name()
            );
        }
    }

    async fn agent_lost(&mut self, driver: &SchedulerDriver, agent_id: &AgentId) {
        self.finish(driver, Err(format!("agent {} was lost", agent_id.value)))
            .await;
    }

    async fn error(&mut self, _: &SchedulerDriver, message: &str) {
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        outcome.get_or_insert(Err(format!("the master ended the framework: {message}")));
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let framework = framework_info("volume-demo", args.user.clone());
    let timeout = Duration::from_secs(args.timeout);
    let outcome = Arc::new(Mutex::new(None));
    let demo = VolumeDemo {
        args,
        step: Step::CreateVolume,
        volume_id: None,
        outcome: outcome.clone(),
    };
    let master = demo.args.master.clone();
    let driver = match SchedulerDriver::new(framework, SchedulerConfig::new(&master)) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("volume-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Subscribing to the master at {master}.");
    match tokio::time::timeout(timeout, driver.run(demo)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("volume-demo: the driver failed: {e}"),
        Err(_) => {
            eprintln!("volume-demo: gave up after {} s", timeout.as_secs());
            let _ = driver.stop(false).await;
        }
    }
    let result = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
    match result {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(_)) | None => ExitCode::FAILURE,
    }
}
