//! `block-bench-executor`: the custom executor of `block-bench` (and the example of writing an
//! executor with [`ExecutorDriver`]).
//!
//! The agent starts it for a task and sets its environment; the driver subscribes to the agent.
//! For each task it finds the task's block device, runs fio against it with the job from
//! `TaskInfo.data`, sends the figures to the scheduler as a framework message and ends the
//! task TASK_FINISHED (TASK_FAILED with fio's complaint, TASK_KILLED when killed). Once its
//! task has ended and the update is acknowledged, it exits.

#[path = "../block_bench/job.rs"]
mod job;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use job::{Figures, Job, JobResult};
use mesoblk_framework::block;
use mesoblk_framework::executor::{Executor, ExecutorDriver};
use mesoblk_framework::proto::mesos::v1::{KillPolicy, TaskId, TaskInfo, TaskState, TaskStatus};
use tokio::sync::oneshot;

/// How long to wait for the last update's acknowledgement before exiting anyway.
const ACK_WAIT: Duration = Duration::from_secs(30);

struct BenchExecutor {
    /// Running tasks, each with the switch that kills its fio.
    running: BTreeMap<String, oneshot::Sender<()>>,
}

fn status(task_id: &TaskId, state: TaskState, message: Option<String>) -> TaskStatus {
    TaskStatus {
        task_id: task_id.clone(),
        state: state as i32,
        message,
        ..TaskStatus::default()
    }
}

fn send(driver: &ExecutorDriver, update: TaskStatus) {
    if let Err(e) = driver.send_status_update(update) {
        eprintln!("block-bench-executor: cannot send a status update: {e}");
    }
}

fn fio_command(job: &Job, device: &std::path::Path) -> tokio::process::Command {
    let mut fio = tokio::process::Command::new("fio");
    fio.arg("--name=block-bench")
        .arg(format!("--filename={}", device.display()))
        .args([
            "--direct=1",
            "--ioengine=libaio",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--iodepth={}", job.iodepth))
        .arg(format!("--runtime={}", job.runtime_secs))
        .kill_on_drop(true);
    fio
}

/// Runs the task's fio job; the task's final update says how it went.
async fn run_job(
    driver: ExecutorDriver,
    task_id: TaskId,
    job: Job,
    device: PathBuf,
    kill: oneshot::Receiver<()>,
) {
    let output = tokio::select! {
        output = fio_command(&job, &device).output() => output,
        _ = kill => {
            send(&driver, status(&task_id, TaskState::TaskKilled, Some("killed by the scheduler".into())));
            return finish(driver).await;
        }
    };
    let ended = match output {
        Err(e) => Err(format!("cannot run fio: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => result_from_fio(&task_id.value, &device.display().to_string(), &out.stdout),
    };
    match ended {
        Ok(result) => {
            let data = serde_json::to_vec(&result).unwrap_or_default();
            if let Err(e) = driver.send_framework_message(data).await {
                eprintln!("block-bench-executor: cannot send the result: {e}");
            }
            send(&driver, status(&task_id, TaskState::TaskFinished, None));
        }
        Err(why) => send(&driver, status(&task_id, TaskState::TaskFailed, Some(why))),
    }
    finish(driver).await;
}

/// One task per executor: once its end is acknowledged the executor is done.
async fn finish(driver: ExecutorDriver) {
    if !driver.wait_acknowledged(ACK_WAIT).await {
        eprintln!("block-bench-executor: the last update was not acknowledged in time");
    }
    if let Err(e) = driver.stop().await {
        eprintln!("block-bench-executor: {e}");
    }
}

impl Executor for BenchExecutor {
    async fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
        let job = task.data.as_deref().map(serde_json::from_slice::<Job>);
        let job = match job {
            Some(Ok(job)) => job,
            Some(Err(e)) => {
                return send(
                    driver,
                    status(
                        &task.task_id,
                        TaskState::TaskFailed,
                        Some(format!("bad job: {e}")),
                    ),
                )
            }
            None => {
                return send(
                    driver,
                    status(
                        &task.task_id,
                        TaskState::TaskFailed,
                        Some("the task has no job".into()),
                    ),
                )
            }
        };
        let Some(device) = block::device_path(&task).or_else(block::device_path_from_env) else {
            let why = "the task has no block device".to_owned();
            return send(
                driver,
                status(&task.task_id, TaskState::TaskFailed, Some(why)),
            );
        };
        println!(
            "block-bench-executor: running fio on {} for {}",
            device.display(),
            task.task_id.value
        );
        send(
            driver,
            status(
                &task.task_id,
                TaskState::TaskRunning,
                Some(device.display().to_string()),
            ),
        );
        let (kill, killed) = oneshot::channel();
        self.running.insert(task.task_id.value.clone(), kill);
        tokio::spawn(run_job(driver.clone(), task.task_id, job, device, killed));
    }

    async fn kill_task(&mut self, _: &ExecutorDriver, task_id: &TaskId, _: Option<&KillPolicy>) {
        if let Some(kill) = self.running.remove(&task_id.value) {
            let _ = kill.send(());
        }
    }

    async fn shutdown(&mut self, _: &ExecutorDriver) {
        for (_, kill) in std::mem::take(&mut self.running) {
            let _ = kill.send(());
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let driver = match ExecutorDriver::from_env() {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("block-bench-executor: {e} (it is started by a mesoblk or Mesos agent)");
            return ExitCode::FAILURE;
        }
    };
    let executor = BenchExecutor {
        running: BTreeMap::new(),
    };
    match driver.run(executor).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("block-bench-executor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads fio's `--output-format=json` report.
fn result_from_fio(task_id: &str, device: &str, report: &[u8]) -> Result<JobResult, String> {
    let report: serde_json::Value =
        serde_json::from_slice(report).map_err(|e| format!("fio's report is not JSON: {e}"))?;
    let job = report
        .get("jobs")
        .and_then(|jobs| jobs.get(0))
        .ok_or("fio's report has no job")?;
    Ok(JobResult {
        task_id: task_id.to_owned(),
        device: device.to_owned(),
        read: figures(&job["read"]),
        write: figures(&job["write"]),
    })
}

fn figures(side: &serde_json::Value) -> Figures {
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    Figures {
        iops: number(&side["iops"]),
        bandwidth_kib: number(&side["bw"]),
        p99_latency_us: number(&side["clat_ns"]["percentile"]["99.000000"]) / 1000.0,
    }
}
