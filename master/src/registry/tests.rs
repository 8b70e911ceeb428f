//! Registry tests: the record format, the embedded store's recovery rules, and a property test
//! that crashes it at random byte offsets and checks nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesoblk_proto::mesos::v1::quota::QuotaConfig;
use mesoblk_proto::mesos::v1::value::Scalar;
use mesoblk_proto::mesos::v1::{AgentInfo, FrameworkId, FrameworkInfo, Resource};
use proptest::prelude::*;

use super::*;

fn agent_info(hostname: &str) -> AgentInfo {
    AgentInfo {
        hostname: hostname.into(),
        ..Default::default()
    }
}

fn framework(id: &str, removed: bool) -> FrameworkRecord {
    FrameworkRecord {
        id: id.into(),
        info: FrameworkInfo {
            user: "tester".into(),
            name: format!("framework {id}"),
            id: Some(FrameworkId { value: id.into() }),
            failover_timeout: Some(60.0),
            ..Default::default()
        },
        failover_timeout_secs: 60.0,
        removed,
        registered_time_secs: 1_700_000_000.5,
        unregistered_time_secs: removed.then_some(1_700_000_100.25),
    }
}

fn quota(role: &str, cpus: Option<f64>) -> QuotaConfig {
    QuotaConfig {
        role: role.into(),
        guarantees: cpus
            .map(|value| ("cpus".to_string(), Scalar { value }))
            .into_iter()
            .collect(),
        limits: Default::default(),
    }
}

fn disk(mb: f64) -> Resource {
    Resource {
        name: "disk".into(),
        scalar: Some(Scalar { value: mb }),
        ..Default::default()
    }
}

fn open(dir: &Path, compact_bytes_min: u64) -> EmbeddedRegistry {
    EmbeddedRegistry::open(dir, EmbeddedOptions { compact_bytes_min }).expect("registry opens")
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).expect("log exists").len()
}

#[test]
fn the_record_format_is_pinned() {
    let weights = Mutation::UpdateWeights {
        weights: [("web".to_string(), 2.5)].into_iter().collect(),
    };
    assert_eq!(
        serde_json::to_string(&weights).expect("encodes"),
        r#"{"op":"update_weights","weights":{"web":2.5}}"#
    );
    let gone = Mutation::MarkAgentGone {
        agent_id: "M-S1".into(),
        time_secs: 12.0,
    };
    assert_eq!(
        serde_json::to_string(&gone).expect("encodes"),
        r#"{"op":"mark_agent_gone","agent_id":"M-S1","time_secs":12.0}"#
    );
    // An AgentInfo with hostname "h" is the protobuf 0a 01 68.
    let admit = Mutation::AdmitAgent {
        agent_id: "M-S1".into(),
        info: agent_info("h"),
    };
    assert_eq!(
        serde_json::to_string(&admit).expect("encodes"),
        r#"{"op":"admit_agent","agent_id":"M-S1","info":"CgFo"}"#
    );
}

#[test]
fn snapshots_round_trip_through_json() {
    let mut state = RegistrySnapshot::default();
    let batch = vec![
        Mutation::SetMasterId {
            master_id: "m".into(),
        },
        Mutation::Started,
        Mutation::AdmitAgent {
            agent_id: "m-S0".into(),
            info: agent_info("a0"),
        },
        Mutation::MarkAgentUnreachable {
            agent_id: "m-S9".into(),
            time_secs: 3.5,
        },
        Mutation::PutFramework {
            framework: framework("m-0000", true),
        },
        Mutation::UpdateWeights {
            weights: [("r".to_string(), 0.5)].into_iter().collect(),
        },
        Mutation::UpdateQuotas {
            configs: vec![quota("r", Some(4.0))],
        },
        Mutation::PutVolume {
            agent_id: "m-S0".into(),
            volume_id: "v1".into(),
            resource: disk(64.0),
        },
        Mutation::PutDisk {
            agent_id: "m-S0".into(),
            disk_id: "d1".into(),
            resource: disk(1024.0),
        },
    ];
    for mutation in batch {
        mutation.validate().expect("valid");
        mutation.apply_to(&mut state);
    }
    let json = serde_json::to_string(&state).expect("encodes");
    let back: RegistrySnapshot = serde_json::from_str(&json).expect("decodes");
    assert_eq!(back, state);
    assert_eq!(state.agents["m-S9"].info, None);
    assert_eq!(
        state.agents["m-S9"].state,
        AgentState::Unreachable { time_secs: 3.5 }
    );
    assert_eq!(state.next_framework_number(), 1);
    assert_eq!(state.next_agent_number(), 10);
}

#[test]
fn mutations_that_cannot_be_stored_are_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = open(dir.path(), 1 << 20);
    let before = len(&registry.log_path());
    let nan = Mutation::UpdateWeights {
        weights: [("r".to_string(), f64::NAN)].into_iter().collect(),
    };
    let empty = Mutation::RemoveAgent {
        agent_id: String::new(),
    };
    for bad in [nan, empty] {
        let batch = vec![Mutation::Started, bad];
        assert!(matches!(
            registry.apply(batch),
            Err(RegistryError::Invalid(_))
        ));
    }
    assert_eq!(len(&registry.log_path()), before, "nothing was written");
    assert_eq!(registry.load().expect("loads").incarnation, 0);
}

#[test]
fn quota_updates_follow_mesos_removal_rule() {
    let mut state = RegistrySnapshot::default();
    Mutation::UpdateQuotas {
        configs: vec![quota("a", Some(1.0)), quota("b", Some(2.0))],
    }
    .apply_to(&mut state);
    Mutation::UpdateQuotas {
        configs: vec![quota("a", None)],
    }
    .apply_to(&mut state);
    assert_eq!(state.quotas.keys().collect::<Vec<_>>(), vec!["b"]);
}

#[test]
fn recover_keeps_the_master_id_and_counts_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let registry = open(dir.path(), 1 << 20);
        recover(&registry).expect("first start")
    };
    let id = first.master_id.clone().expect("an id on the first start");
    assert_eq!(first.incarnation, 1);
    let registry = open(dir.path(), 1 << 20);
    let second = recover(&registry).expect("second start");
    assert_eq!(second.master_id.as_deref(), Some(id.as_str()));
    assert_eq!(second.incarnation, 2);

    let memory = InMemoryRegistry::new();
    assert_eq!(recover(&memory).expect("recovers").incarnation, 1);
}

#[test]
fn a_second_master_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(dir.path(), 1 << 20);
    match EmbeddedRegistry::open(dir.path(), EmbeddedOptions::default()) {
        Err(RegistryError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// Three single-batch records after the snapshot; returns the registry's log and the offset
/// of each record.
fn three_records(dir: &Path) -> (PathBuf, Vec<u64>) {
    let registry = open(dir, 1 << 20);
    let mut offsets = Vec::new();
    for n in 0..3 {
        offsets.push(len(&registry.log_path()));
        registry
            .put_framework(framework(&format!("m-000{n}"), false))
            .expect("applies");
    }
    (registry.log_path(), offsets)
}

#[test]
fn a_corrupt_record_in_the_middle_refuses_to_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, offsets) = three_records(dir.path());
    let mut bytes = fs::read(&path).expect("read");
    let middle = usize::try_from(offsets[1]).expect("small");
    bytes[middle + 40] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    let error = EmbeddedRegistry::open(dir.path(), EmbeddedOptions::default())
        .expect_err("corruption is refused");
    match &error {
        RegistryError::Corrupt {
            path: p, offset, ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, offsets[1]);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("offset {}", offsets[1])),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn a_corrupt_snapshot_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = three_records(dir.path());
    let mut bytes = fs::read(&path).expect("read");
    bytes[log::HEADER_BYTES + 20] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        EmbeddedRegistry::open(dir.path(), EmbeddedOptions::default()),
        Err(RegistryError::Corrupt { .. })
    ));
}

#[test]
fn a_torn_tail_is_truncated_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, offsets) = three_records(dir.path());
    let full = len(&path);
    // Tear the last record, then add junk as a crashed write might.
    let file = OpenOptions::new().append(true).open(&path).expect("open");
    file.set_len(full - 7).expect("truncate");
    (&file).write_all(&[0xAB; 300]).expect("junk");
    drop(file);

    let registry = open(dir.path(), 1 << 20);
    assert_eq!(len(&path), offsets[2], "the torn record is cut off");
    let state = registry.load().expect("loads");
    assert_eq!(
        state.frameworks.keys().collect::<Vec<_>>(),
        vec!["m-0000", "m-0001"]
    );
    registry
        .put_framework(framework("m-0009", false))
        .expect("appends");
    drop(registry);
    let state = open(dir.path(), 1 << 20).load().expect("loads");
    assert!(state.frameworks.contains_key("m-0009"));
    assert!(!state.frameworks.contains_key("m-0002"));
}

#[test]
fn compaction_starts_a_new_generation_and_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = open(dir.path(), 512);
    for n in 0..40 {
        registry
            .put_framework(framework(&format!("m-{n:04}"), n % 3 == 0))
            .expect("applies");
    }
    let stats = registry.stats();
    assert!(stats.compactions >= 2, "{stats:?}");
    let expected = registry.load().expect("loads");
    let current = registry.log_path();
    drop(registry);
    let logs: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("log."))
        .collect();
    assert_eq!(logs.len(), 1, "old generations are deleted: {logs:?}");
    assert_eq!(dir.path().join(&logs[0]), current);
    assert_eq!(open(dir.path(), 512).load().expect("loads"), expected);
}

#[test]
fn leftovers_of_an_interrupted_compaction_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = three_records(dir.path());
    let expected = open(dir.path(), 1 << 20).load().expect("loads");
    // A half-written next generation that was never renamed.
    fs::write(dir.path().join("log.2.tmp"), b"MBLKREG\n partial").expect("write");
    let registry = open(dir.path(), 1 << 20);
    assert_eq!(registry.load().expect("loads"), expected);
    assert_eq!(registry.log_path(), path);
    assert!(!dir.path().join("log.2.tmp").exists());
}

#[test]
fn concurrent_callers_share_fsyncs_and_all_survive() {
    const THREADS: usize = 8;
    const EACH: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Arc::new(open(dir.path(), 1 << 20));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                for n in 0..EACH {
                    let id = format!("m-S{}", t * EACH + n);
                    registry
                        .admit_agent(&id, &agent_info(&format!("host{t}")))
                        .expect("applies");
                    let stored = registry.load().expect("loads");
                    assert!(stored.agents.contains_key(&id), "read your writes");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let stats = registry.stats();
    assert_eq!(stats.batches, (THREADS * EACH) as u64);
    assert!(stats.records <= stats.batches, "{stats:?}");
    drop(registry);
    let state = open(dir.path(), 1 << 20).load().expect("loads");
    assert_eq!(state.agents.len(), THREADS * EACH);
    assert_eq!(state.next_agent_number(), 0, "no master id, no numbering");
}

// ---- Property test: random histories, crashes at random byte offsets. ----

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let agent = (0..4u8).prop_map(|n| format!("m-S{n}"));
    let framework_id = (0..4u8).prop_map(|n| format!("m-{n:04}"));
    let role = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
    let time = (0..1_000_000u32).prop_map(|t| f64::from(t) / 8.0);
    prop_oneof![
        Just(Mutation::Started),
        "[a-f0-9]{8}".prop_map(|master_id| Mutation::SetMasterId { master_id }),
        (agent.clone(), "[a-z]{1,12}").prop_map(|(agent_id, host)| Mutation::AdmitAgent {
            agent_id,
            info: agent_info(&host),
        }),
        (agent.clone(), time.clone()).prop_map(|(agent_id, time_secs)| {
            Mutation::MarkAgentUnreachable {
                agent_id,
                time_secs,
            }
        }),
        (agent.clone(), time).prop_map(|(agent_id, time_secs)| Mutation::MarkAgentGone {
            agent_id,
            time_secs,
        }),
        agent
            .clone()
            .prop_map(|agent_id| Mutation::RemoveAgent { agent_id }),
        (framework_id.clone(), any::<bool>()).prop_map(|(id, removed)| Mutation::PutFramework {
            framework: framework(&id, removed),
        }),
        framework_id.prop_map(|framework_id| Mutation::RemoveFramework { framework_id }),
        prop::collection::btree_map(role.clone(), 0.1f64..100.0, 1..3)
            .prop_map(|weights| Mutation::UpdateWeights { weights }),
        prop::collection::vec((role, prop::option::of(0.0f64..64.0)), 1..3).prop_map(|qs| {
            Mutation::UpdateQuotas {
                configs: qs.iter().map(|(r, c)| quota(r, *c)).collect(),
            }
        }),
        (agent.clone(), 0..3u8, 1.0f64..1e6).prop_map(|(agent_id, v, mb)| Mutation::PutVolume {
            agent_id,
            volume_id: format!("v{v}"),
            resource: disk(mb),
        }),
        (agent.clone(), 0..3u8).prop_map(|(agent_id, v)| Mutation::RemoveVolume {
            agent_id,
            volume_id: format!("v{v}"),
        }),
        (agent.clone(), 0..3u8, 1.0f64..1e6).prop_map(|(agent_id, d, mb)| Mutation::PutDisk {
            agent_id,
            disk_id: format!("d{d}"),
            resource: disk(mb),
        }),
        (agent, 0..3u8).prop_map(|(agent_id, d)| Mutation::RemoveDisk {
            agent_id,
            disk_id: format!("d{d}"),
        }),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Apply(Vec<Mutation>),
    Reopen,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        9 => prop::collection::vec(arb_mutation(), 1..4).prop_map(Step::Apply),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Debug, Clone)]
enum Junk {
    None,
    Zeros(usize),
    Bytes(Vec<u8>),
}

fn arb_junk() -> impl Strategy<Value = Junk> {
    prop_oneof![
        Just(Junk::None),
        (1..2000usize).prop_map(Junk::Zeros),
        prop::collection::vec(any::<u8>(), 1..300).prop_map(Junk::Bytes),
    ]
}

/// The state the model had after each acknowledged step, with the log file and its size then.
struct History(Vec<(PathBuf, u64, RegistrySnapshot)>);

impl History {
    fn note(&mut self, registry: &EmbeddedRegistry, model: &RegistrySnapshot) {
        let path = registry.log_path();
        let size = len(&path);
        self.0.push((path, size, model.clone()));
    }

    /// The byte range a crash may cut `path` at (its snapshot must stay), and the model state
    /// for a cut at `cut`: the last one whose record ended at or before it.
    fn range(&self, path: &Path) -> (u64, u64) {
        let sizes: Vec<u64> = self
            .0
            .iter()
            .filter(|(p, ..)| p == path)
            .map(|(_, s, _)| *s)
            .collect();
        (sizes[0], sizes[sizes.len() - 1])
    }

    fn expected_at(&self, path: &Path, cut: u64) -> &RegistrySnapshot {
        let mut expected = None;
        for (p, size, state) in &self.0 {
            if p == path && *size <= cut {
                expected = Some(state);
            }
        }
        expected.expect("the snapshot is never cut")
    }
}

fn crash_and_recover(
    steps: Vec<Step>,
    compact_bytes_min: u64,
    cut_fraction: f64,
    junk: Junk,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = open(dir.path(), compact_bytes_min);
    let mut model = RegistrySnapshot::default();
    let mut history = History(Vec::new());
    history.note(&registry, &model);
    for step in steps {
        match step {
            Step::Apply(batch) => {
                registry.apply(batch.clone()).expect("applies");
                for mutation in batch {
                    mutation.apply_to(&mut model);
                }
                prop_assert_eq!(&registry.load().expect("loads"), &model);
            }
            Step::Reopen => {
                drop(registry);
                registry = open(dir.path(), compact_bytes_min);
                prop_assert_eq!(&registry.load().expect("loads"), &model);
            }
        }
        history.note(&registry, &model);
    }

    // Crash: cut the current log somewhere after its snapshot, maybe leave junk behind.
    let path = registry.log_path();
    drop(registry);
    let (low, high) = history.range(&path);
    prop_assert_eq!(len(&path), high);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let cut = low + ((high - low) as f64 * cut_fraction) as u64;
    let file = OpenOptions::new().append(true).open(&path).expect("open");
    file.set_len(cut).expect("cut");
    match &junk {
        Junk::None => {}
        Junk::Zeros(n) => (&file).write_all(&vec![0; *n]).expect("zeros"),
        Junk::Bytes(bytes) => (&file).write_all(bytes).expect("junk"),
    }
    drop(file);

    let registry = open(dir.path(), compact_bytes_min);
    let expected = history.expected_at(&path, cut).clone();
    prop_assert_eq!(&registry.load().expect("loads"), &expected);

    // The store keeps working after recovery.
    let extra = Mutation::UpdateWeights {
        weights: [("after-crash".to_string(), 3.0)].into_iter().collect(),
    };
    registry.apply(vec![extra.clone()]).expect("applies");
    drop(registry);
    let mut expected = expected;
    extra.apply_to(&mut expected);
    prop_assert_eq!(
        &open(dir.path(), compact_bytes_min).load().expect("loads"),
        &expected
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn nothing_acknowledged_is_lost_at_any_crash_point(
        steps in prop::collection::vec(arb_step(), 0..40),
        compact in prop::sample::select(vec![256u64, 2048, 1 << 20]),
        cut_fraction in 0.0f64..=1.0,
        junk in arb_junk(),
    ) {
        crash_and_recover(steps, compact, cut_fraction, junk)?;
    }
}

#[test]
fn weights_of_the_model_and_the_store_agree_on_merge() {
    let registry = InMemoryRegistry::new();
    registry
        .set_weights(&[("a".into(), 2.0), ("b".into(), 3.0)])
        .expect("applies");
    registry.set_weights(&[("a".into(), 5.0)]).expect("applies");
    let weights: BTreeMap<_, _> = registry.load().expect("loads").weights;
    assert_eq!(weights["a"], 5.0);
    assert_eq!(weights["b"], 3.0);
}
