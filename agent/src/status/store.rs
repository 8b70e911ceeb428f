//! The status-update store: [`UpdateQueues`] made durable in the agent's work dir.
//!
//! Each task has one append-only log, `<dir>/<framework>/<task>.updates` (ids encoded by
//! [`path_component`]; format in [`super::log`]). An update is appended and fsynced **before**
//! it is queued, so it is never sent without being on disk; an acknowledgement is appended and
//! fsynced before the update leaves the queue. [`StatusUpdateStore::open`] replays every log,
//! so after an agent restart the pending updates come back in their order and acknowledged ones
//! stay acknowledged. A torn last record (a crash during an append) is cut off: that append had
//! not returned, so nothing was sent or acknowledged because of it.
//!
//! Logs are compacted when they grow past [`COMPACT_AFTER_RECORDS`]: the header, the pending
//! updates, and (when nothing is pending) the latest update with its acknowledgement are
//! written to a new file that atomically replaces the old one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mesoblk_proto::mesos::v1::TaskStatus;
use thiserror::Error;

use super::log::{self, Record};
use super::stream::{
    Acked, Added, Backoff, Outgoing, StreamError, UpdateQueues, UpdateStream, Wake,
};
use super::update::{status_uuid, TaskKey, UpdateUuid};
use crate::checkpoint::{
    create_dirs, decode_component, path_component, sync_dir, write_atomically, CheckpointError,
};

/// A log is compacted once it holds more records than this.
pub const COMPACT_AFTER_RECORDS: usize = 256;

const LOG_SUFFIX: &str = ".updates";

/// Why the store refused or failed an operation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The queue refused the update or acknowledgement (nothing was written).
    #[error(transparent)]
    Refused(#[from] StreamError),
    /// Writing or reading a log failed.
    #[error(transparent)]
    Io(#[from] CheckpointError),
}

/// A log that could not be used on recovery.
#[derive(Debug)]
pub struct BadLog {
    /// The log (renamed to `<name>.corrupt` when its records were damaged).
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// What [`StatusUpdateStore::open`] found.
#[derive(Debug, Default)]
pub struct StoreRecovery {
    /// Tasks with a stream.
    pub streams: usize,
    /// Unacknowledged updates restored.
    pub pending: usize,
    /// Logs whose torn tail was cut off, with the bytes cut.
    pub torn: Vec<(PathBuf, u64)>,
    /// Logs that could not be replayed.
    pub bad: Vec<BadLog>,
}

#[derive(Debug)]
struct TaskLog {
    path: PathBuf,
    file: File,
    records: usize,
}

/// The durable status-update store of one agent.
#[derive(Debug)]
pub struct StatusUpdateStore {
    dir: PathBuf,
    queues: UpdateQueues,
    logs: HashMap<TaskKey, TaskLog>,
}

impl StatusUpdateStore {
    /// Opens the store in `dir` (created if needed) and replays its logs.
    pub fn open(
        dir: &Path,
        backoff: Backoff,
    ) -> Result<(StatusUpdateStore, StoreRecovery), StoreError> {
        create_dirs(dir)?;
        let mut store = StatusUpdateStore {
            dir: dir.to_path_buf(),
            queues: UpdateQueues::new(backoff),
            logs: HashMap::new(),
        };
        let mut report = StoreRecovery::default();
        for path in list_logs(dir)? {
            store.replay(&path, &mut report)?;
        }
        report.streams = store.queues.streams().count();
        report.pending = store.queues.streams().map(|(_, s)| s.pending().len()).sum();
        Ok((store, report))
    }

    /// Persists `status` (an update of a task of `framework_id`), then queues it for sending.
    /// A duplicate (same uuid) is accepted and ignored.
    pub fn add(&mut self, framework_id: &str, status: TaskStatus) -> Result<Added, StoreError> {
        if self.queues.check_add(framework_id, &status)? == Added::Duplicate {
            return Ok(Added::Duplicate);
        }
        let key = TaskKey::new(framework_id, status.task_id.value.clone());
        self.append(&key, &Record::Update(Box::new(status.clone())))?;
        let added = self.queues.add(framework_id, status)?;
        debug_assert_eq!(added, Added::Queued);
        Ok(added)
    }

    /// The scheduler acknowledged update `uuid` of task `key`: persists that, then drops the
    /// update from the queue (the next one becomes due at once).
    pub fn acknowledge(&mut self, key: &TaskKey, uuid: &UpdateUuid) -> Result<Acked, StoreError> {
        let acked = self.queues.check_ack(key, uuid)?;
        if acked == Acked::Duplicate {
            return Ok(acked);
        }
        self.append(key, &Record::Ack(*uuid))?;
        let done = self.queues.acknowledge(key, uuid)?;
        debug_assert_eq!(done, acked);
        if self
            .logs
            .get(key)
            .is_some_and(|l| l.records > COMPACT_AFTER_RECORDS)
        {
            self.compact(key)?;
        }
        Ok(done)
    }

    /// Every update due now (at most one per task), marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<Outgoing> {
        self.queues.due(now)
    }

    /// When the store needs attention next.
    pub fn wake(&self) -> Wake {
        self.queues.wake()
    }

    /// Every task's oldest unacknowledged update is due again now.
    pub fn reset_backoff(&mut self) {
        self.queues.reset_backoff();
    }

    /// One task's stream.
    pub fn stream(&self, key: &TaskKey) -> Option<&UpdateStream> {
        self.queues.stream(key)
    }

    /// Every task's stream.
    pub fn streams(&self) -> impl Iterator<Item = (&TaskKey, &UpdateStream)> {
        self.queues.streams()
    }

    /// Forgets a task: its stream and its log (when the agent garbage-collects the task).
    pub fn forget(&mut self, key: &TaskKey) -> Result<(), StoreError> {
        self.queues.remove(key);
        let path = match self.logs.remove(key) {
            Some(log) => log.path,
            None => self.log_path(key),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("a log has a folder"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CheckpointError::io("remove", &path)(e).into()),
        }
        Ok(())
    }

    fn log_path(&self, key: &TaskKey) -> PathBuf {
        let mut name = path_component(&key.task_id);
        name.push_str(LOG_SUFFIX);
        self.dir.join(path_component(&key.framework_id)).join(name)
    }

    /// Appends one record durably, creating the log (with its header) first if needed.
    fn append(&mut self, key: &TaskKey, record: &Record) -> Result<(), StoreError> {
        if !self.logs.contains_key(key) {
            let log = self.create_log(key)?;
            self.logs.insert(key.clone(), log);
        }
        let log = self.logs.get_mut(key).expect("just ensured");
        let bytes = log::encode(record);
        log.file
            .write_all(&bytes)
            .and_then(|()| log.file.sync_data())
            .map_err(CheckpointError::io("append to", &log.path))?;
        log.records += 1;
        Ok(())
    }

    fn create_log(&self, key: &TaskKey) -> Result<TaskLog, StoreError> {
        let path = self.log_path(key);
        create_dirs(path.parent().expect("a log has a folder"))?;
        let header = log::encode(&header(key));
        write_atomically(&path, &header)?;
        Ok(TaskLog {
            file: open_append(&path)?,
            path,
            records: 1,
        })
    }

    /// Rewrites a task's log with only what recovery needs (see the module docs).
    fn compact(&mut self, key: &TaskKey) -> Result<(), StoreError> {
        let stream = self.queues.stream(key).expect("a logged task has a stream");
        let mut records = vec![header(key)];
        if stream.pending().len() == 0 {
            if let Some(latest) = stream.latest() {
                let uuid = status_uuid(latest).expect("stored updates have uuids");
                records.push(Record::Update(Box::new(latest.clone())));
                records.push(Record::Ack(uuid));
            }
        }
        records.extend(
            stream
                .pending()
                .map(|s| Record::Update(Box::new(s.clone()))),
        );
        let bytes: Vec<u8> = records.iter().flat_map(log::encode).collect();
        let path = self.log_path(key);
        write_atomically(&path, &bytes)?;
        let log = TaskLog {
            file: open_append(&path)?,
            path,
            records: records.len(),
        };
        self.logs.insert(key.clone(), log);
        Ok(())
    }

    /// Replays one log into the queues.
    fn replay(&mut self, path: &Path, report: &mut StoreRecovery) -> Result<(), StoreError> {
        let bytes = std::fs::read(path).map_err(CheckpointError::io("read", path))?;
        let decoded = match log::decode(&bytes) {
            Ok(d) => d,
            Err(e) => {
                report.bad.push(set_aside(path, e.to_string()));
                return Ok(());
            }
        };
        let Some((
            Record::Header {
                framework_id,
                task_id,
            },
            rest,
        )) = decoded.records.split_first()
        else {
            // No intact header: the agent died while creating the log, before any update.
            std::fs::remove_file(path).map_err(CheckpointError::io("remove", path))?;
            report.torn.push((path.to_path_buf(), bytes.len() as u64));
            return Ok(());
        };
        let key = TaskKey::new(framework_id.clone(), task_id.clone());
        if self.log_path(&key) != path {
            let reason = format!("its header names {key}, which belongs in another file");
            report.bad.push(set_aside(path, reason));
            return Ok(());
        }
        let mut stream = UpdateStream::new(task_id.clone());
        for record in rest {
            let applied = match record {
                Record::Update(status) => stream.add((**status).clone()).map(drop),
                Record::Ack(uuid) => stream.acknowledge(uuid).map(drop),
                Record::Header { .. } => Err(StreamError::UnknownTask),
            };
            if let Err(e) = applied {
                report
                    .bad
                    .push(set_aside(path, format!("replay failed: {e}")));
                return Ok(());
            }
        }
        if decoded.good_len < bytes.len() {
            truncate(path, decoded.good_len as u64)?;
            report
                .torn
                .push((path.to_path_buf(), (bytes.len() - decoded.good_len) as u64));
        }
        self.queues.insert(key.clone(), stream);
        self.logs.insert(
            key,
            TaskLog {
                file: open_append(path)?,
                path: path.to_path_buf(),
                records: decoded.records.len(),
            },
        );
        Ok(())
    }
}

fn header(key: &TaskKey) -> Record {
    Record::Header {
        framework_id: key.framework_id.clone(),
        task_id: key.task_id.clone(),
    }
}

fn open_append(path: &Path) -> Result<File, CheckpointError> {
    OpenOptions::new()
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(CheckpointError::io("open", path))
}

fn truncate(path: &Path, len: u64) -> Result<(), CheckpointError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(CheckpointError::io("open", path))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(CheckpointError::io("truncate", path))
}

/// Renames a damaged log out of the way (kept for an operator) and says why.
fn set_aside(path: &Path, reason: String) -> BadLog {
    let mut aside = path.as_os_str().to_os_string();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    match std::fs::rename(path, &aside) {
        Ok(()) => BadLog {
            path: aside,
            reason,
        },
        Err(e) => BadLog {
            path: path.to_path_buf(),
            reason: format!("{reason}; could not set it aside: {e}"),
        },
    }
}

/// Every `*.updates` file under `<dir>/<framework>/`, sorted.
fn list_logs(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut logs = Vec::new();
    for fw in std::fs::read_dir(dir).map_err(CheckpointError::io("list", dir))? {
        let fw = fw.map_err(CheckpointError::io("list", dir))?.path();
        if !fw.is_dir()
            || fw
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(decode_component)
                .is_none()
        {
            continue;
        }
        for entry in std::fs::read_dir(&fw).map_err(CheckpointError::io("list", &fw))? {
            let path = entry.map_err(CheckpointError::io("list", &fw))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(LOG_SUFFIX) {
                logs.push(path);
            } else if name.ends_with(".tmp") {
                // A compaction or creation that did not finish: the old file (if any) is intact.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    logs.sort();
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesoblk_proto::mesos::v1::task_status::Source;
    use mesoblk_proto::mesos::v1::TaskState;
    use proptest::prelude::*;

    use super::*;
    use crate::status::task_state::is_terminal;
    use crate::status::update::{status_state, NewStatus};

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(80),
    };

    fn update(task: &str, state: TaskState) -> TaskStatus {
        NewStatus::new(task, state, Source::Executor).build(std::time::SystemTime::now())
    }

    fn uuid(s: &TaskStatus) -> UpdateUuid {
        status_uuid(s).unwrap()
    }

    fn pending(store: &StatusUpdateStore, key: &TaskKey) -> Vec<UpdateUuid> {
        store
            .stream(key)
            .map(|s| s.pending().map(uuid).collect())
            .unwrap_or_default()
    }

    #[test]
    fn pending_updates_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let key = TaskKey::new("fw/1", "..");
        let a = update("..", TaskState::TaskStarting);
        let b = update("..", TaskState::TaskRunning);
        let c = update("..", TaskState::TaskFinished);
        {
            let (mut store, report) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
            assert_eq!(report.streams, 0);
            for s in [&a, &b, &c] {
                store.add("fw/1", s.clone()).unwrap();
            }
            assert_eq!(store.due(Instant::now())[0].status, a);
            store.acknowledge(&key, &uuid(&a)).unwrap();
        }
        let (mut store, report) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        assert_eq!((report.streams, report.pending), (1, 2));
        assert_eq!(pending(&store, &key), vec![uuid(&b), uuid(&c)]);
        assert_eq!(
            store.stream(&key).unwrap().latest_state(),
            Some(TaskState::TaskFinished)
        );
        // The acknowledged one is not sent again; the next one is due at once.
        let sent = store.due(Instant::now());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, b);
        store.acknowledge(&key, &uuid(&b)).unwrap();
        assert_eq!(
            store.acknowledge(&key, &uuid(&c)).unwrap(),
            Acked::Acked { complete: true }
        );
        drop(store);
        let (mut store, _) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        let stream = store.stream(&key).unwrap();
        assert!(stream.is_complete());
        store.forget(&key).unwrap();
        assert!(store.stream(&key).is_none());
        drop(store);
        let (_, report) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        assert_eq!(report.streams, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let key = TaskKey::new("fw", "t");
        let a = update("t", TaskState::TaskRunning);
        let path;
        {
            let (mut store, _) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
            store.add("fw", a.clone()).unwrap();
            path = store.log_path(&key);
        }
        let good = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&log::encode(&Record::Ack([1; 16]))[..10])
            .unwrap();
        drop(f);
        let (mut store, report) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        assert_eq!(report.torn, vec![(path.clone(), 10)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        let b = update("t", TaskState::TaskFailed);
        store.add("fw", b.clone()).unwrap();
        drop(store);
        let (store, _) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        assert_eq!(pending(&store, &key), vec![uuid(&a), uuid(&b)]);
    }

    #[test]
    fn long_logs_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let key = TaskKey::new("fw", "t");
        let (mut store, _) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        let mut last = None;
        for _ in 0..COMPACT_AFTER_RECORDS {
            let s = update("t", TaskState::TaskRunning);
            store.add("fw", s.clone()).unwrap();
            store.acknowledge(&key, &uuid(&s)).unwrap();
            last = Some(s);
        }
        assert!(store.logs[&key].records <= COMPACT_AFTER_RECORDS);
        let pending_one = update("t", TaskState::TaskFinished);
        store.add("fw", pending_one.clone()).unwrap();
        drop(store);
        let (store, _) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        assert_eq!(pending(&store, &key), vec![uuid(&pending_one)]);
        let _ = last;
        assert_eq!(
            store.stream(&key).unwrap().latest_state(),
            Some(TaskState::TaskFinished)
        );
    }

    #[test]
    fn damaged_logs_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let fw_dir = dir.path().join("fw");
        std::fs::create_dir_all(&fw_dir).unwrap();
        // An intact frame whose payload is garbage.
        let payload = [9u8];
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&log::crc32(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        std::fs::write(fw_dir.join("t.updates"), bytes).unwrap();
        let (_, report) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
        assert_eq!(report.bad.len(), 1);
        assert!(fw_dir.join("t.updates.corrupt").exists());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(usize, bool),
        Send(u64),
        Ack(usize),
        AckStale(usize, usize),
        Crash(Option<(usize, Vec<u8>)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let garbage = prop::option::of((0..3usize, prop::collection::vec(any::<u8>(), 1..30)));
        prop_oneof![
            4 => (0..3usize, prop::bool::weighted(0.1)).prop_map(|(t, term)| Op::Add(t, term)),
            3 => (0..40u64).prop_map(Op::Send),
            3 => (0..3usize).prop_map(Op::Ack),
            1 => (0..3usize, 0..6usize).prop_map(|(t, i)| Op::AckStale(t, i)),
            1 => garbage.prop_map(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random add/send/ack/crash/recover sequences against real files: no acknowledged
        /// update is ever sent again, no unacknowledged one is lost, and each task's updates are
        /// sent in the order they were added, across any number of crashes (with torn tails).
        #[test]
        fn no_ack_resent_no_update_lost_order_kept(ops in prop::collection::vec(op(), 1..80)) {
            let dir = tempfile::tempdir().unwrap();
            let tasks = ["a", "b/c", "."];
            let keys: Vec<TaskKey> = tasks.iter().map(|t| TaskKey::new("fw", *t)).collect();
            let mut store = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap().0;
            let mut now = Instant::now();
            let mut added: Vec<Vec<TaskStatus>> = vec![Vec::new(); 3];
            let mut acked = [0usize; 3];
            for op in ops {
                match op {
                    Op::Add(t, terminal) => {
                        let state = if terminal { TaskState::TaskKilled } else { TaskState::TaskRunning };
                        let s = update(tasks[t], state);
                        let closed = added[t].last().is_some_and(|l| is_terminal(status_state(l)));
                        match store.add("fw", s.clone()) {
                            Ok(Added::Queued) => { prop_assert!(!closed); added[t].push(s); }
                            Ok(Added::Duplicate) => prop_assert!(false, "fresh uuids are not duplicates"),
                            Err(_) => prop_assert!(closed),
                        }
                    }
                    Op::Send(ms) => {
                        now += Duration::from_millis(ms);
                        for out in store.due(now) {
                            let t = keys.iter().position(|k| *k == out.key).unwrap();
                            // Exactly the oldest unacknowledged update of its task.
                            prop_assert_eq!(uuid(&out.status), uuid(&added[t][acked[t]]));
                        }
                    }
                    Op::Ack(t) => {
                        if acked[t] < added[t].len() {
                            let u = uuid(&added[t][acked[t]]);
                            let r = store.acknowledge(&keys[t], &u);
                            prop_assert!(matches!(r, Ok(Acked::Acked { .. })), "{:?}", r);
                            acked[t] += 1;
                        }
                    }
                    Op::AckStale(t, i) => {
                        if i < acked[t] {
                            let u = uuid(&added[t][i]);
                            let r = store.acknowledge(&keys[t], &u);
                            prop_assert!(r.is_err() || matches!(r, Ok(Acked::Duplicate)));
                        }
                    }
                    Op::Crash(torn) => {
                        drop(store);
                        if let Some((t, bytes)) = torn {
                            let path = dir.path().join("fw").join(format!("{}.updates", path_component(tasks[t])));
                            if path.exists() {
                                let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                                f.write_all(&bytes).unwrap();
                            }
                        }
                        let (recovered, report) = StatusUpdateStore::open(dir.path(), BACKOFF).unwrap();
                        prop_assert!(report.bad.is_empty(), "{:?}", report.bad);
                        store = recovered;
                    }
                }
                for t in 0..3 {
                    let want: Vec<_> = added[t][acked[t]..].iter().map(uuid).collect();
                    prop_assert_eq!(pending(&store, &keys[t]), want);
                    if let Some(last) = added[t].last() {
                        prop_assert_eq!(store.stream(&keys[t]).unwrap().latest_state(), Some(status_state(last)));
                    }
                }
            }
        }
    }
}
