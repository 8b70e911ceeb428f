//! Kernel tier: the cache tier through the real driver. fio with crc32c verification through
//! the cache in every mode; `kill -9` of the server during a write job in writeback mode, then
//! `recover` (which replays the cache's journal) and every write acknowledged before the kill,
//! flushed or not, verifies; live mode
//! switches and detach with the data verified afterwards, through the device and on the backing
//! file itself; a cache that fails validation is refused until the operator chooses; and the
//! bad-input cases, each a one-line error that leaves nothing behind.

#[path = "kernel/mod.rs"]
mod kernel;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kernel::{crash_and_recover, refused, run, Device, TARGET_BIN};
use ublk_target::cache::CACHE_BLOCK;

const MIB: u64 = 1 << 20;
/// A 1 MiB region written just before a dirty-data check: younger than the 30 s after which
/// background writeback writes data back, and below its watermarks.
const DIRTY_MIB: u64 = 120;

/// What a fio run does with its region.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fio {
    /// Write, then read back and verify.
    WriteAndVerify,
    /// Write and fsync at the end; verified later.
    Write,
    /// Only verify what an earlier `Write` of the same region wrote.
    Verify,
}

/// The arguments of a fio job on `target` covering `size_mib` MiB from `offset_mib`: random
/// 4k/64k writes with crc32c headers. The same region gives the same offsets and data
/// (randrepeat), so a later `--verify_only` run checks what an earlier run wrote.
fn fio_args(target: &str, offset_mib: u64, size_mib: u64, phase: Fio) -> Vec<String> {
    let direct = u8::from(target.starts_with("/dev/"));
    let mut args: Vec<String> = [
        "--name=cache",
        "--ioengine=psync",
        "--rw=randwrite",
        "--bssplit=4k/50:64k/50",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randrepeat=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--filename={target}"));
    args.push(format!("--direct={direct}"));
    args.push(format!("--offset={offset_mib}M"));
    args.push(format!("--size={size_mib}M"));
    if phase == Fio::Write {
        args.push("--end_fsync=1".to_owned());
    }
    args.push(match phase {
        Fio::WriteAndVerify => "--do_verify=1".to_owned(),
        Fio::Write => "--do_verify=0".to_owned(),
        Fio::Verify => "--verify_only".to_owned(),
    });
    args
}

fn fio(target: &str, offset_mib: u64, size_mib: u64, phase: Fio) {
    let args = fio_args(target, offset_mib, size_mib, phase);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("fio", &args);
}

/// A sparse file of `bytes`.
fn sparse_file(path: &Path, bytes: u64) -> PathBuf {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(bytes))
        .expect("create file");
    path.to_owned()
}

/// A work folder with a 128 MiB backing file and a 32 MiB cache file.
struct Setup {
    work: tempfile::TempDir,
    backing: PathBuf,
    cache: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        kernel::require_ublk();
        let work = tempfile::tempdir().expect("tempdir");
        let backing = sparse_file(&work.path().join("backing.img"), 128 * MIB);
        let cache = sparse_file(&work.path().join("cache.img"), 32 * MIB);
        Setup {
            work,
            backing,
            cache,
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.work.path().join("run")
    }

    /// `mesoblk-target --run-dir <run> args...`, which must succeed; its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let run_dir = self.run_dir();
        let out = run(
            TARGET_BIN,
            &[&["--run-dir", run_dir.to_str().unwrap()], args].concat(),
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// The same, expected to fail with one line containing `needle`.
    fn cli_refused(&self, args: &[&str], needle: &str) -> String {
        let run_dir = self.run_dir();
        refused(
            &[&["--run-dir", run_dir.to_str().unwrap()], args].concat(),
            needle,
        )
    }

    /// A device on the backing file with a cache in `mode` (extra `add` arguments appended).
    fn add(&self, cache: &str, mode: &str, extra: &[&str]) -> Device {
        let args = [
            "--backend",
            "file",
            "--path",
            self.backing.to_str().unwrap(),
            "--cache",
            cache,
            "--cache-mode",
            mode,
        ];
        Device::add(self.work.path(), &[&args[..], extra].concat())
    }

    fn add_cached(&self, mode: &str) -> Device {
        self.add(self.cache.to_str().unwrap(), mode, &[])
    }

    /// `cache status --json` of device `id`.
    fn status(&self, id: u32) -> serde_json::Value {
        let text = self.cli(&["cache", "status", &id.to_string(), "--json"]);
        serde_json::from_str(&text).expect("status json")
    }

    /// Device `id`'s entry in `list --json`.
    fn listed(&self, id: u32) -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(&self.cli(&["list", "--json"])).expect("list json");
        all.as_array()
            .and_then(|all| all.iter().find(|d| d["id"] == id))
            .cloned()
            .expect("device listed")
    }
}

fn dirty_bytes(status: &serde_json::Value) -> u64 {
    status["stats"]["dirty_bytes"]
        .as_u64()
        .expect("dirty_bytes")
}

#[test]
fn fio_verifies_through_the_cache_in_every_mode() {
    let cases = [
        ("file", "writeback"),
        ("file", "writethrough"),
        ("file", "writearound"),
        ("file", "none"),
        ("ram", "writethrough"),
    ];
    for (store, mode) in cases {
        let setup = Setup::new();
        let device = if store == "ram" {
            setup.add("ram", mode, &["--cache-size", "16M"])
        } else {
            setup.add_cached(mode)
        };
        // 48 MiB through a 32 MiB cache: evictions (and, in writeback, a full cache) included.
        fio(device.path(), 0, 48, Fio::WriteAndVerify);
        let status = setup.status(device.id());
        assert_eq!(status["stats"]["mode"], mode, "{store} {mode}");
        let stats = &status["stats"];
        let writes =
            stats["write_hits"].as_u64().unwrap() + stats["write_misses"].as_u64().unwrap();
        assert!(writes > 0, "{store} {mode}: no writes counted: {status}");
        let listed = setup.listed(device.id());
        assert_eq!(listed["server"]["cache"]["stats"]["mode"], mode);
        // The backing file must hold everything once the cache is flushed and the device gone.
        let flushed = setup.cli(&["cache", "flush", &device.id().to_string()]);
        assert!(flushed.contains("flushed"), "{flushed}");
        assert_eq!(dirty_bytes(&setup.status(device.id())), 0, "{store} {mode}");
        device.delete();
        fio(setup.backing.to_str().unwrap(), 0, 48, Fio::Verify);
    }
}

#[test]
fn killed_writeback_server_recovers_and_every_acknowledged_write_verifies() {
    let setup = Setup::new();
    let device = setup.add_cached("writeback");
    let id = device.id().to_string();
    // Written and fsync'd before the crash. Background writeback writes data back once it is
    // 30 s old, which a slow guest may reach during the first job, so a small second write just
    // before the crash makes sure dirty data is there for the journal replay to bring back.
    fio(device.path(), 0, 16, Fio::Write);
    fio(device.path(), DIRTY_MIB, 1, Fio::Write);
    assert!(
        dirty_bytes(&setup.status(device.id())) > 0,
        "writeback left nothing dirty: the crash would not exercise the journal"
    );

    // A write job (its own region, O_DIRECT, no fsync: nothing it writes is flushed) running
    // when the server is killed. After the recovery it reads back and verifies every block it
    // wrote: a write acknowledged before the kill must survive it, flushed or not
    // (docs/cache.md, "Process crashes").
    let args = fio_args(device.path(), 64, 32, Fio::WriteAndVerify);
    let mut job = Command::new("fio")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        job.try_wait().unwrap().is_none(),
        "fio finished before the crash; make the job longer"
    );
    crash_and_recover(&setup.run_dir(), device.id());
    let out = job.wait_with_output().expect("wait for fio");
    assert!(
        out.status.success(),
        "fio failed or did not verify across the recovery:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The recovered server replayed the journal: the flushed data reads back intact.
    fio(device.path(), 0, 16, Fio::Verify);
    fio(device.path(), DIRTY_MIB, 1, Fio::Verify);
    assert_eq!(setup.status(device.id())["stats"]["mode"], "writeback");
    setup.cli(&["cache", "flush", &id]);
    assert_eq!(dirty_bytes(&setup.status(device.id())), 0);
    device.delete();
    fio(setup.backing.to_str().unwrap(), 0, 16, Fio::Verify);
    fio(setup.backing.to_str().unwrap(), DIRTY_MIB, 1, Fio::Verify);
    fio(setup.backing.to_str().unwrap(), 64, 32, Fio::Verify);
}

#[test]
fn live_mode_switches_and_detach_keep_the_data() {
    let setup = Setup::new();
    let device = setup.add_cached("writeback");
    let id = device.id().to_string();
    fio(device.path(), 0, 16, Fio::Write);
    fio(device.path(), DIRTY_MIB, 1, Fio::Write);
    assert!(dirty_bytes(&setup.status(device.id())) > 0);

    // Leaving writeback drains the dirty data before it says done.
    let said = setup.cli(&["cache", "mode", &id, "writethrough"]);
    assert!(said.contains("writeback -> writethrough: done"), "{said}");
    let status = setup.status(device.id());
    assert_eq!(status["stats"]["mode"], "writethrough");
    assert_eq!(dirty_bytes(&status), 0);
    let listed = setup.listed(device.id());
    assert_eq!(listed["record"]["spec"]["cache"]["mode"], "writethrough");

    fio(device.path(), 16, 16, Fio::Write);
    setup.cli(&["cache", "mode", &id, "writearound"]);
    fio(device.path(), 32, 8, Fio::Write);
    setup.cli(&["cache", "mode", &id, "writeback"]);
    fio(device.path(), 40, 8, Fio::Write);
    for (offset, size) in [(0, 16), (16, 16), (32, 8), (40, 8), (DIRTY_MIB, 1)] {
        fio(device.path(), offset, size, Fio::Verify);
    }

    // Detach: drained, out of the I/O path, gone from the status and the record.
    let said = setup.cli(&["cache", "detach", &id]);
    assert!(said.contains("cache detached: done"), "{said}");
    setup.cli_refused(&["cache", "status", &id], "has no cache");
    let listed = setup.listed(device.id());
    assert!(listed["server"]["cache"].is_null(), "{listed}");
    assert!(listed["record"]["spec"]["cache"].is_null(), "{listed}");
    for (offset, size) in [(0, 16), (16, 16), (32, 8), (40, 8), (DIRTY_MIB, 1)] {
        fio(device.path(), offset, size, Fio::Verify);
    }
    fio(device.path(), 48, 16, Fio::WriteAndVerify);
    device.delete();
    let backing = setup.backing.to_str().unwrap();
    for (offset, size) in [
        (0, 16),
        (16, 16),
        (32, 8),
        (40, 8),
        (48, 16),
        (DIRTY_MIB, 1),
    ] {
        fio(backing, offset, size, Fio::Verify);
    }
}

#[test]
fn an_invalid_cache_is_refused_until_the_operator_chooses() {
    let setup = Setup::new();
    // A cache that held dirty data (an orderly stop keeps it in the cache store)...
    let device = setup.add_cached("writeback");
    fio(device.path(), 0, 8, Fio::Write);
    device.delete();
    // ...then damage inside both superblock copies (the generation field): neither validates.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&setup.cache)
            .unwrap();
        for copy in 0..2u64 {
            f.seek(SeekFrom::Start(copy * 4096 + 24)).unwrap();
            f.write_all(&[0xa5; 8]).unwrap();
        }
        f.sync_all().unwrap();
    }
    let cache = setup.cache.to_str().unwrap();
    let backing = setup.backing.to_str().unwrap();
    let add = [
        "add",
        "--backend",
        "file",
        "--path",
        backing,
        "--cache",
        cache,
    ];
    let before = device_ids();
    setup.cli_refused(&add, "--cache-invalid");
    setup.cli_refused(
        &[&add[..], &["--cache-invalid", "flush-valid"]].concat(),
        "only discard is possible",
    );
    assert_eq!(device_ids(), before, "a refused add left a device behind");
    assert_no_records(&setup.run_dir());

    let device = Device::add(
        setup.work.path(),
        &[&add[1..], &["--cache-invalid", "discard"]].concat(),
    );
    let listed = setup.listed(device.id());
    assert!(
        listed["record"]["spec"]["cache"]["on_invalid"].is_null(),
        "the one-time choice was recorded: {listed}"
    );
    fio(device.path(), 0, 8, Fio::WriteAndVerify);
    device.delete();
}

#[test]
fn recover_refuses_a_damaged_journal_until_the_operator_flushes_the_valid_part_or_discards() {
    let setup = Setup::new();
    let device = setup.add_cached("writeback");
    let (id, dev) = (device.id(), device.path());
    let run_dir = setup.run_dir();
    // Regions of 1 MiB, each written with O_DIRECT and fsync'd (a FLUSH: a commit seals its
    // journal records), all still dirty when the server dies.
    let saved = kernel::pattern(MIB as usize, 1);
    let lost = kernel::pattern(MIB as usize, 2);
    write_synced(dev, 0, &saved);
    write_synced(dev, 8, &lost);
    assert_all_dirty(&setup, id, 2);

    // flush-valid: the records before the damage (all of region 0) are written back, the
    // versions recorded from the damage on (all of region 8) are lost.
    damage_then_recover(&setup, id, 8, "flush-valid");
    let log = std::fs::read_to_string(run_dir.join(format!("{id}.log"))).expect("server log");
    assert!(
        log.contains("blocks=256"),
        "flush-valid did not write back exactly region 0's 256 blocks:\n{log}"
    );
    assert_eq!(read_direct(dev, 0), saved, "flush-valid lost valid data");
    assert_eq!(
        read_direct(dev, 8),
        zeroes(),
        "data recorded after the damage came back"
    );
    let status = setup.status(id);
    assert_eq!(status["stats"]["mode"], "writeback");
    assert_eq!(
        dirty_bytes(&status),
        0,
        "the cache was not reformatted empty"
    );

    // discard: the whole cache goes, valid records before the damage (region 16) included;
    // what flush-valid put on the backing store (region 0) stays.
    write_synced(dev, 16, &kernel::pattern(MIB as usize, 3));
    write_synced(dev, 24, &kernel::pattern(MIB as usize, 4));
    assert_all_dirty(&setup, id, 2);
    damage_then_recover(&setup, id, 24, "discard");
    assert_eq!(read_direct(dev, 0), saved);
    for region in [8, 16, 24] {
        assert_eq!(
            read_direct(dev, region),
            zeroes(),
            "region {region} MiB survived discard"
        );
    }
    assert_eq!(dirty_bytes(&setup.status(id)), 0);
    fio(dev, 32, 8, Fio::WriteAndVerify);
    device.delete();

    // What each choice left is on the backing file itself.
    let backing = std::fs::read(&setup.backing).expect("backing file");
    assert!(
        backing[..MIB as usize] == saved[..],
        "region 0 not on the backing file"
    );
    for region in [8, 16, 24] {
        let at = (region * MIB) as usize;
        assert!(
            backing[at..at + MIB as usize].iter().all(|&b| b == 0),
            "region {region} MiB reached the backing file"
        );
    }
}

/// Writes `data` at `offset_mib` MiB of `device` with O_DIRECT, then fsyncs it (a FLUSH).
fn write_synced(device: &str, offset_mib: u64, data: &[u8]) {
    let source = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(source.path(), data).expect("write pattern");
    run(
        "dd",
        &[
            &format!("if={}", source.path().display()),
            &format!("of={device}"),
            "bs=64k",
            &format!("seek={}", offset_mib * 16),
            "oflag=direct",
            "conv=fsync,notrunc",
            "status=none",
        ],
    );
}

/// 1 MiB at `offset_mib` MiB of `device`, read with O_DIRECT (the page cache could hold data
/// from before a recovery).
fn read_direct(device: &str, offset_mib: u64) -> Vec<u8> {
    run(
        "dd",
        &[
            &format!("if={device}"),
            "bs=64k",
            "count=16",
            &format!("skip={}", offset_mib * 16),
            "iflag=direct",
            "status=none",
        ],
    )
    .stdout
}

fn zeroes() -> Vec<u8> {
    vec![0; MIB as usize]
}

/// Everything written (`mib` MiB) is still dirty: background writeback has not written any of
/// it back, so what a recovery leaves on the device comes from its choice alone.
fn assert_all_dirty(setup: &Setup, id: u32, mib: u64) {
    let dirty = dirty_bytes(&setup.status(id));
    assert!(dirty >= mib * MIB, "only {dirty} bytes dirty of {mib} MiB");
}

/// Kills device `id`'s server, damages the journal block naming `offset_mib`, checks that a
/// plain `recover` is refused with nothing changed, then recovers with `--cache-invalid
/// choice`: the device is live again.
fn damage_then_recover(setup: &Setup, id: u32, offset_mib: u64, choice: &str) {
    kernel::kill_until_quiesced(&setup.run_dir(), id);
    damage_journal_block_naming(&setup.cache, offset_mib);
    assert_recover_refused_and_nothing_changed(setup, id);
    let id_arg = id.to_string();
    setup.cli(&["recover", "--id", &id_arg, "--cache-invalid", choice]);
    assert_eq!(kernel::device_state(id), "live");
}

/// Plain `recover` of the quiesced device `id` fails with one line naming both choices and
/// changes nothing: the device stays quiesced, its record and its cache store untouched.
fn assert_recover_refused_and_nothing_changed(setup: &Setup, id: u32) {
    let record_path = setup.run_dir().join(format!("{id}.json"));
    let record = std::fs::read(&record_path).expect("device record");
    let store = std::fs::read(&setup.cache).expect("cache store");
    let line = setup.cli_refused(&["recover", "--id", &id.to_string()], "--cache-invalid");
    assert!(
        line.contains("flush-valid") && line.contains("discard") && line.contains("journal"),
        "{line}"
    );
    assert_eq!(kernel::device_state(id), "quiesced");
    assert_eq!(
        std::fs::read(&record_path).unwrap(),
        record,
        "record changed"
    );
    assert!(
        std::fs::read(&setup.cache).unwrap() == store,
        "a refused recover wrote to the cache store"
    );
}

/// Damages (one byte of its first record, checksum left as it was) the first journal block of
/// the live region that maps a block of the MiB at `offset_mib`, and checks that a committed
/// block follows it, so that recovery must call it damage rather than a torn tail
/// (docs/cache.md, "Recovery procedure").
fn damage_journal_block_naming(cache: &Path, offset_mib: u64) {
    use std::os::unix::fs::FileExt;
    use ublk_target::cache::layout::{
        decode_journal_block, JournalBlock, JournalPosition, Record, Superblock,
    };
    let bytes = std::fs::read(cache).expect("cache store");
    let block_at = |offset: u64| &bytes[offset as usize..(offset + CACHE_BLOCK) as usize];
    let sb = [0, 1]
        .into_iter()
        .filter_map(|copy| Superblock::decode(block_at(copy * CACHE_BLOCK)).ok())
        .max_by_key(|sb| sb.generation)
        .expect("a valid superblock");
    let wanted = offset_mib * MIB / CACHE_BLOCK..(offset_mib + 1) * MIB / CACHE_BLOCK;
    let names_wanted = |records: &[Record]| {
        records
            .iter()
            .any(|r| matches!(r, Record::Map { block, .. } if wanted.contains(block)))
    };
    let (mut target, mut sealed) = (None, false);
    for index in 0..sb.geometry.journal_blocks {
        let offset = sb.geometry.journal_offset(sb.active_region, index);
        let position = JournalPosition {
            format_id: sb.format_id,
            epoch: sb.epoch,
            index,
        };
        let (records, committed) = match decode_journal_block(position, block_at(offset)) {
            JournalBlock::Valid(records) => (records, true),
            JournalBlock::Uncommitted(records) => (records, false),
            _ => break,
        };
        if target.is_none() && names_wanted(&records) {
            target = Some(offset);
        } else if target.is_some() && committed {
            sealed = true;
        }
    }
    let offset = target.expect("no journal block maps the region");
    assert!(sealed, "no committed block after the one to damage");
    // Byte 8 of the first record (64 bytes in) is its device block number.
    let at = offset + 64 + 8;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(cache)
        .expect("open cache store");
    file.write_all_at(&[bytes[at as usize] ^ 0xff], at)
        .expect("damage");
    file.sync_all().expect("sync cache store");
}

#[test]
fn bad_cache_input_is_refused_with_one_line_and_leaves_nothing() {
    let setup = Setup::new();
    let backing = setup.backing.to_str().unwrap();
    let cache = setup.cache.to_str().unwrap();
    let missing = setup.work.path().join("missing.img");
    let add = ["add", "--backend", "file", "--path", backing, "--cache"];
    let with = |extra: &[&'static str], store: &str| -> Vec<String> {
        add.iter()
            .copied()
            .chain([store])
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let before = device_ids();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&[], missing.to_str().unwrap()), "does not exist"),
        (
            with(&["--cache-size", "1000000"], cache),
            "multiple of 4096",
        ),
        (with(&["--cache-size", "64K"], cache), "at least"),
        (with(&["--cache-mode", "fast"], cache), "unknown cache mode"),
        (with(&["--cache-mode", "writeback"], "ram"), "writeback"),
        (with(&["--queues", "2"], cache), "exactly one queue"),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        setup.cli_refused(&args, needle);
    }
    assert_eq!(device_ids(), before, "a refused add left a device behind");
    assert_no_records(&setup.run_dir());
    let untouched = std::fs::read(&setup.cache).unwrap();
    assert!(
        untouched.iter().all(|&b| b == 0),
        "a refused add wrote to the cache store"
    );

    // Cache requests to a device without a cache.
    let plain = Device::add(setup.work.path(), &["--backend", "file", "--path", backing]);
    let id = plain.id().to_string();
    for request in [
        vec!["cache", "status", &id],
        vec!["cache", "flush", &id],
        vec!["cache", "mode", &id, "none"],
        vec!["cache", "detach", &id],
    ] {
        setup.cli_refused(&request, "has no cache");
    }
    setup.cli_refused(&["cache", "mode", &id, "fast"], "unknown cache mode");
    plain.delete();

    // A RAM cache can never be switched to writeback on a live device either.
    let ram = setup.add("ram", "writethrough", &["--cache-size", "8M"]);
    let id = ram.id().to_string();
    setup.cli_refused(&["cache", "mode", &id, "writeback"], "writeback");
    assert_eq!(setup.status(ram.id())["stats"]["mode"], "writethrough");
    let listed = setup.listed(ram.id());
    assert_eq!(listed["record"]["spec"]["cache"]["mode"], "writethrough");
    ram.delete();
}

/// The ids of the ublk devices that exist.
fn device_ids() -> Vec<u64> {
    let all: serde_json::Value =
        serde_json::from_slice(&run(TARGET_BIN, &["list", "--json"]).stdout).expect("list json");
    all.as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_u64())
        .collect()
}

/// No device record, socket or pending server log in `run_dir` (the logs of devices that ran
/// earlier in the test stay, as they should).
fn assert_no_records(run_dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(run_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(".log") || name.starts_with("starting-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
