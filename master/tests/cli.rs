//! The `mesoblk-master` binary's command line: Mesos-named flags, `--help`, one-line errors.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesoblk-master"))
        .args(args)
        .output()
        .expect("run mesoblk-master");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_mesos_flag_names() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--ip",
        "--port",
        "--hostname",
        "--work_dir",
        "--allocation_interval",
        "--advertise_ip",
        "--agent_ping_timeout",
        "--max_agent_ping_timeouts",
        "--offer_timeout",
        "--status_update_retry_interval",
        "--max_completed_tasks_per_framework",
    ] {
        assert!(stdout.contains(flag), "{flag} in:\n{stdout}");
    }
    assert!(stdout.contains("[default: 5050]"));
}

#[test]
fn bad_flags_are_one_line_errors() {
    for args in [
        &["--bogus"][..],
        &["--port", "notaport"],
        &["--allocation_interval", "5"],
        &["--heartbeat_interval", "0secs"],
        &["--ip", "999.1.1.1"],
        &["--agent_ping_timeout", "5"],
        &["--max_agent_ping_timeouts", "0"],
        &["--offer_timeout", "0secs"],
    ] {
        let (code, stdout, stderr) = run(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mesoblk-master: "), "{args:?}: {stderr}");
    }
}
