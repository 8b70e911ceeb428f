//! The simulator end to end at a tiny scale (20 agents, 3 frameworks, 200 tasks) against the
//! real master (`mesoblk_master::router` on a loopback port, in this process so that its RSS is
//! this process's): every task must reach TASK_RUNNING and every figure must be reported. This
//! checks that the sim works, not how fast anything is (scripts/bench-master measures that).

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use mesoblk_master::{router, Config, MasterHandle};

const SIM: &str = env!("CARGO_BIN_EXE_mesoblk-master-sim");
/// Bound on one sim run (its own --timeout is shorter).
const RUN_MAX: Duration = Duration::from_secs(120);

async fn sim(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(SIM)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(RUN_MAX, child)
        .await
        .expect("the sim finishes in time")
        .expect("the sim runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_run_gets_every_task_running_and_reports_every_figure() {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let config = Config::new("bench-master.local", Ipv4Addr::LOCALHOST, addr.port());
    let app = router(MasterHandle::new(config));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let report_path = dir.path().join("report.json");
    let pid = std::process::id().to_string();
    let output = sim(&[
        "--master",
        &addr.to_string(),
        "--agents",
        "20",
        "--frameworks",
        "3",
        "--tasks",
        "200",
        "--master-pid",
        &pid,
        "--timeout",
        "60",
        "--report",
        report_path.to_str().expect("utf-8 path"),
    ])
    .await;
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sim failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("tasks running 200"), "{stdout}");
    assert!(stdout.contains("allocation run ms: p50 "), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("JSON");
    assert_eq!(report["agents"], 20);
    assert_eq!(report["frameworks"], 3);
    assert_eq!(report["tasks_running"], 200);
    assert!(report["tasks_per_sec"].as_f64().is_some_and(|t| t > 0.0));
    let latency_p50 = report["running_latency_p50_ms"].as_f64().expect("p50");
    let latency_p99 = report["running_latency_p99_ms"].as_f64().expect("p99");
    assert!(latency_p50 > 0.0 && latency_p50 <= latency_p99);
    let metrics = &report["master_metrics"];
    let runs = metrics["allocator/mesos/allocation_runs"]
        .as_f64()
        .expect("allocation_runs");
    let count = metrics["allocator/mesos/allocation_run_ms/count"]
        .as_f64()
        .expect("the timer's statistics");
    assert!(count >= 2.0 && count <= runs, "count {count}, runs {runs}");
    let p50 = metrics["allocator/mesos/allocation_run_ms/p50"]
        .as_f64()
        .expect("p50");
    let p99 = metrics["allocator/mesos/allocation_run_ms/p99"]
        .as_f64()
        .expect("p99");
    let max = metrics["allocator/mesos/allocation_run_ms/max"]
        .as_f64()
        .expect("max");
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{metrics}");
    for key in ["rss_registered_mib", "rss_running_mib"] {
        assert!(report[key].as_f64().is_some_and(|r| r > 0.0), "{key}");
    }
}

#[tokio::test]
async fn a_run_that_cannot_fit_its_tasks_fails_before_starting() {
    // 2 agents of 2 cpus hold 40 tasks of 0.1 cpus: 41 cannot be placed. No master is needed.
    let output = sim(&[
        "--master",
        "127.0.0.1:9",
        "--agents",
        "2",
        "--frameworks",
        "1",
        "--tasks",
        "41",
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fewer than --tasks 41"), "{stderr}");
}
