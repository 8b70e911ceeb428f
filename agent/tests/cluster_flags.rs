//! The agent binary refuses bad flags with one line on stderr and a non-zero exit, and refuses
//! block pools on a machine without ublk (this host's kernel has none).

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mesoblk-agent"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run mesoblk-agent");
    assert!(!output.status.success(), "{args:?} must fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line for {args:?}: {stderr}"
    );
    stderr
}

#[test]
fn bad_flags_get_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let work = work.to_str().unwrap();
    assert!(refused(&["--work_dir", work]).contains("--master"));
    assert!(refused(&["--master", "127.0.0.1:5050"]).contains("--work_dir"));
    assert!(
        refused(&["--master", "127.0.0.1:5050", "--work_dir", work, "--bogus"]).contains("--bogus")
    );
    assert!(refused(&["--master", "no-port", "--work_dir", work])
        .contains("--master must be HOST:PORT"));
    let bad = refused(&[
        "--master",
        "127.0.0.1:5050",
        "--work_dir",
        work,
        "--resources",
        "cpus:abc",
    ]);
    assert!(
        bad.contains("--resources") && bad.contains("cpus:abc"),
        "{bad}"
    );
    let bad = refused(&[
        "--master",
        "127.0.0.1:5050",
        "--work_dir",
        work,
        "--executor_shutdown_grace_period",
        "soon",
    ]);
    assert!(bad.contains("executor_shutdown_grace_period"), "{bad}");
    for (flag, value, why) in [
        ("--gc_disk_headroom", "1.5", "between 0 and 1"),
        ("--gc_disk_headroom", "lots", "not a number"),
        ("--disk_watch_interval", "0secs", "above zero"),
        ("--gc_delay", "1fortnight", "gc_delay"),
    ] {
        let bad = refused(&[
            "--master",
            "127.0.0.1:5050",
            "--work_dir",
            work,
            flag,
            value,
        ]);
        assert!(bad.contains(flag) && bad.contains(why), "{bad}");
    }
    let bad = refused(&[
        "--master",
        "127.0.0.1:5050",
        "--work_dir",
        work,
        "--isolation",
        "magic",
    ]);
    assert!(bad.contains("magic"), "{bad}");
    let missing = dir.path().join("nope.json");
    let bad = refused(&[
        "--master",
        "127.0.0.1:5050",
        "--work_dir",
        work,
        "--block_pool_config",
        missing.to_str().unwrap(),
    ]);
    assert!(bad.contains("--block_pool_config"), "{bad}");
    assert!(
        !dir.path().join("work").exists()
            || std::fs::read_dir(dir.path().join("work"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn block_pools_without_ublk_are_refused_at_startup() {
    assert!(
        !std::path::Path::new("/dev/ublk-control").exists(),
        "this test runs on a host without ublk (the kernel tier covers pools)"
    );
    let dir = tempfile::tempdir().unwrap();
    let pools = dir.path().join("pools");
    let config = dir.path().join("storage.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"pools":[{{"name":"p","dir":"{}/p","size":"1G"}}],"profiles":[{{"name":"fast","pool":"p"}}]}}"#,
            pools.display()
        ),
    )
    .unwrap();
    let work = dir.path().join("work");
    let stderr = refused(&[
        "--master",
        "127.0.0.1:5050",
        "--work_dir",
        work.to_str().unwrap(),
        "--block_pool_config",
        config.to_str().unwrap(),
        "--block_pool_dirs",
        pools.to_str().unwrap(),
    ]);
    assert!(stderr.contains("ublk"), "{stderr}");
}
