//! Volumes: their identity, their persisted record, and the state machine every change goes
//! through.
//!
//! ```text
//!             Created                 Attach(a)
//!  Creating ───────────► Ready ◄───────────────────► Attached(a)
//!     │                    │        Detach
//!     │ CreateFailed       │ Destroy
//!     ▼                    ▼
//!   (gone)             Destroying ──Destroyed──► (gone)
//! ```
//!
//! [`VolumeState::apply`] is pure: it either returns the next state (or [`Next::Gone`]) or a
//! [`TransitionError`] naming the state and the refused event. The storage manager persists a
//! record *before* acting on the new state (Creating before the backing file exists, Destroying
//! before it is deleted), so recovery can finish or undo whatever a crash interrupted.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::Filesystem;

/// Version of the record format written by this build.
pub const RECORD_FORMAT: u32 = 1;
/// Longest volume id accepted.
pub const VOLUME_ID_MAX_LEN: usize = 64;

/// A volume's id: lower-case letters, digits and `-`, at most 64 characters. It names the
/// backing file (`<pool dir>/<id>.img`), the record, and the Mesos disk's `source.id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(String);

/// Why a string is not a volume id.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not a mesoblk volume id (1-64 of a-z, 0-9 and '-', not starting with '-')")]
pub struct BadVolumeId(pub String);

impl VolumeId {
    /// A fresh random id: `vol-` and 16 hex digits.
    pub fn generate() -> VolumeId {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        VolumeId(format!("vol-{}", &hex[..16]))
    }

    /// Checks `text` is a valid id.
    pub fn parse(text: &str) -> Result<VolumeId, BadVolumeId> {
        let valid = !text.is_empty()
            && text.len() <= VOLUME_ID_MAX_LEN
            && !text.starts_with('-')
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(VolumeId(text.to_owned()))
        } else {
            Err(BadVolumeId(text.to_owned()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an environment variable suffix: upper case, `-` as `_` (`VOL_0A1B…`).
    pub fn env_suffix(&self) -> String {
        self.0.to_ascii_uppercase().replace('-', "_")
    }
}

impl TryFrom<String> for VolumeId {
    type Error = BadVolumeId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        VolumeId::parse(&text)
    }
}

impl From<VolumeId> for String {
    fn from(id: VolumeId) -> String {
        id.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task sees of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A raw block device (`/dev/ublkbN`).
    Block,
    /// A file system mounted in the task's sandbox.
    Mount,
}

/// How long a volume lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Lifetime {
    /// Made by CREATE_DISK; lives until DESTROY_DISK.
    Persistent,
    /// Made for one task launched on a slice of a RAW pool; destroyed when it ends.
    Ephemeral {
        /// The task.
        task_id: String,
    },
    /// Made ahead of any task as one of its profile's spare devices (`storage::spares`); it
    /// becomes `Ephemeral` when a task claims it.
    Spare,
}

/// A volume served to a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The task using it.
    pub task_id: String,
    /// Its ublk device id (`N` in `/dev/ublkbN`).
    pub device_id: u32,
    /// Pid of the device's server process when it was started.
    pub server_pid: u32,
    /// The block device node.
    pub block_path: PathBuf,
    /// Where the file system is mounted (MOUNT volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<PathBuf>,
    /// The task's user, who owns the device node (and the mount's root folder).
    pub uid: u32,
    /// The task's group.
    pub gid: u32,
}

/// Where a volume is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum VolumeState {
    /// The record exists; the backing file may be partly made. Recovery removes both.
    Creating,
    /// Made (and formatted, for MOUNT volumes); no device serves it.
    Ready,
    /// A device serves it to a task.
    Attached(Attachment),
    /// Being deleted. Recovery finishes the deletion.
    Destroying,
}

/// Something that happens to a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeEvent {
    /// The backing file is complete (and formatted).
    Created,
    /// Making it failed; its remains were removed.
    CreateFailed,
    /// A device now serves it.
    Attach(Attachment),
    /// Its device was stopped.
    Detach,
    /// DESTROY_DISK (or the end of an ephemeral volume's task).
    Destroy,
    /// The backing file is gone.
    Destroyed,
}

/// The result of a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The volume is now in this state.
    State(VolumeState),
    /// The volume no longer exists.
    Gone,
}

/// An event the volume's state does not allow.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("cannot {event} a volume that is {state}")]
pub struct TransitionError {
    /// The state, described (`attached to task t1 as /dev/ublkb0`).
    pub state: String,
    /// The refused event (`destroy`, `attach`, ...).
    pub event: &'static str,
}

impl VolumeEvent {
    /// A verb for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            VolumeEvent::Created => "finish creating",
            VolumeEvent::CreateFailed => "abandon creating",
            VolumeEvent::Attach(_) => "attach",
            VolumeEvent::Detach => "detach",
            VolumeEvent::Destroy => "destroy",
            VolumeEvent::Destroyed => "finish destroying",
        }
    }
}

impl fmt::Display for VolumeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeState::Creating => f.write_str("being created"),
            VolumeState::Ready => f.write_str("ready (not attached)"),
            VolumeState::Attached(a) => write!(
                f,
                "attached to task {} as {}",
                a.task_id,
                a.block_path.display()
            ),
            VolumeState::Destroying => f.write_str("being destroyed"),
        }
    }
}

impl VolumeState {
    /// The state after `event`, or why `event` is not allowed now.
    pub fn apply(&self, event: VolumeEvent) -> Result<Next, TransitionError> {
        let next = match (self, event) {
            (VolumeState::Creating, VolumeEvent::Created) => Next::State(VolumeState::Ready),
            (VolumeState::Creating, VolumeEvent::CreateFailed) => Next::Gone,
            (VolumeState::Ready, VolumeEvent::Attach(a)) => Next::State(VolumeState::Attached(a)),
            (VolumeState::Attached(_), VolumeEvent::Detach) => Next::State(VolumeState::Ready),
            (VolumeState::Ready, VolumeEvent::Destroy) => Next::State(VolumeState::Destroying),
            (VolumeState::Destroying, VolumeEvent::Destroyed) => Next::Gone,
            (state, event) => {
                return Err(TransitionError {
                    state: state.to_string(),
                    event: event.verb(),
                })
            }
        };
        Ok(next)
    }

    /// The attachment, if attached.
    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            VolumeState::Attached(a) => Some(a),
            _ => None,
        }
    }
}

/// Everything the agent keeps about one volume, persisted as
/// `<work dir>/storage/volumes/<id>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// [`RECORD_FORMAT`] when written.
    pub format: u32,
    /// The volume's id.
    pub id: VolumeId,
    /// Its pool.
    pub pool: String,
    /// Its profile.
    pub profile: String,
    /// BLOCK or MOUNT.
    pub kind: VolumeKind,
    /// The file system of a MOUNT volume (formatted while the volume was being created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
    /// Its size in bytes (a whole number of MiB).
    pub size_bytes: u64,
    /// The sparse backing file.
    pub backing: PathBuf,
    /// Its cache store (`<cache pool dir>/<id>.cache`), when its profile has a cache. Kept in
    /// the record so the volume is always served with the store that may hold its dirty data,
    /// whatever the profile says later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// Persistent or ephemeral.
    pub lifetime: Lifetime,
    /// Where it is in its life.
    pub state: VolumeState,
    /// The Mesos disk resource it is reported as (Mesos JSON), for persistent volumes: the
    /// CREATE_DISK's converted resource without allocation info, so reservations survive restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<serde_json::Value>,
    /// The operation that created it (its uuid), so a retried CREATE_DISK is answered again
    /// instead of creating a second volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl VolumeRecord {
    /// Applies `event` to the record's state. `Ok(false)` means the volume is gone.
    pub fn apply(&mut self, event: VolumeEvent) -> Result<bool, TransitionError> {
        match self.state.apply(event)? {
            Next::State(state) => {
                self.state = state;
                Ok(true)
            }
            Next::Gone => Ok(false),
        }
    }

    /// Whether it is an ephemeral volume: one of a task's, or a spare, which no one may keep.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self.lifetime, Lifetime::Ephemeral { .. } | Lifetime::Spare)
    }

    /// Whether it is a spare that no task has claimed yet.
    pub fn is_spare(&self) -> bool {
        self.lifetime == Lifetime::Spare
    }

    /// Its size in whole MiB (Mesos MB).
    pub fn size_mb(&self) -> u64 {
        self.size_bytes / super::config::MIB
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn attachment(task: &str, device_id: u32) -> Attachment {
        Attachment {
            task_id: task.to_owned(),
            device_id,
            server_pid: 42,
            block_path: format!("/dev/ublkb{device_id}").into(),
            mount_path: None,
            uid: 1000,
            gid: 1000,
        }
    }

    #[test]
    fn a_volume_lives_its_documented_life() {
        let mut state = VolumeState::Creating;
        for event in [
            VolumeEvent::Created,
            VolumeEvent::Attach(attachment("t1", 0)),
            VolumeEvent::Detach,
            VolumeEvent::Attach(attachment("t2", 3)),
            VolumeEvent::Detach,
            VolumeEvent::Destroy,
        ] {
            state = match state.apply(event).unwrap() {
                Next::State(s) => s,
                Next::Gone => panic!("gone early"),
            };
        }
        assert_eq!(state, VolumeState::Destroying);
        assert_eq!(state.apply(VolumeEvent::Destroyed), Ok(Next::Gone));
    }

    #[test]
    fn an_attached_volume_cannot_be_destroyed_or_attached_again() {
        let state = VolumeState::Attached(attachment("t1", 7));
        let err = state.apply(VolumeEvent::Destroy).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot destroy a volume that is attached to task t1 as /dev/ublkb7"
        );
        assert!(state
            .apply(VolumeEvent::Attach(attachment("t2", 8)))
            .is_err());
        assert!(VolumeState::Ready.apply(VolumeEvent::Detach).is_err());
        assert!(VolumeState::Creating
            .apply(VolumeEvent::Attach(attachment("t", 1)))
            .is_err());
        assert!(VolumeState::Destroying.apply(VolumeEvent::Created).is_err());
    }

    #[test]
    fn ids_are_checked() {
        let id = VolumeId::generate();
        assert_eq!(VolumeId::parse(id.as_str()), Ok(id.clone()));
        assert_eq!(id.as_str().len(), 20);
        assert!(id.env_suffix().starts_with("VOL_"));
        for bad in ["", "-x", "Vol", "a/b", "a.img", &"x".repeat(65)] {
            assert!(VolumeId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<VolumeId>(r#""../etc""#).is_err());
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = VolumeRecord {
            format: RECORD_FORMAT,
            id: VolumeId::parse("vol-1").unwrap(),
            pool: "p".into(),
            profile: "fast".into(),
            kind: VolumeKind::Mount,
            filesystem: Some(Filesystem::Xfs),
            size_bytes: 256 << 20,
            backing: "/srv/p/vol-1.img".into(),
            cache: None,
            lifetime: Lifetime::Ephemeral {
                task_id: "t".into(),
            },
            state: VolumeState::Attached(Attachment {
                mount_path: Some("/sandbox/data".into()),
                ..attachment("t", 2)
            }),
            resource: None,
            operation: Some("op".into()),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<VolumeRecord>(&json).unwrap(), record);
        assert_eq!(record.size_mb(), 256);
    }

    /// The reference model: which (state, event) pairs are allowed, as a table.
    fn allowed(state: &VolumeState, event: &VolumeEvent) -> Option<Option<&'static str>> {
        use VolumeEvent as E;
        use VolumeState as S;
        match (state, event) {
            (S::Creating, E::Created) => Some(Some("ready")),
            (S::Creating, E::CreateFailed) => Some(None),
            (S::Ready, E::Attach(_)) => Some(Some("attached")),
            (S::Ready, E::Destroy) => Some(Some("destroying")),
            (S::Attached(_), E::Detach) => Some(Some("ready")),
            (S::Destroying, E::Destroyed) => Some(None),
            _ => None,
        }
    }

    fn name(state: &VolumeState) -> &'static str {
        match state {
            VolumeState::Creating => "creating",
            VolumeState::Ready => "ready",
            VolumeState::Attached(_) => "attached",
            VolumeState::Destroying => "destroying",
        }
    }

    fn any_event() -> impl Strategy<Value = VolumeEvent> {
        prop_oneof![
            Just(VolumeEvent::Created),
            Just(VolumeEvent::CreateFailed),
            (0u32..4, "[a-c]").prop_map(|(id, task)| VolumeEvent::Attach(attachment(&task, id))),
            Just(VolumeEvent::Detach),
            Just(VolumeEvent::Destroy),
            Just(VolumeEvent::Destroyed),
        ]
    }

    proptest! {
        /// Any event sequence: the machine agrees with the table (so an attached volume is never
        /// destroyed or attached twice), refusals change nothing, and an attached volume keeps
        /// the attachment it was given.
        #[test]
        fn the_machine_matches_its_table(events in proptest::collection::vec(any_event(), 0..40)) {
            let mut state = Some(VolumeState::Creating);
            for event in events {
                let Some(current) = state.clone() else { break };
                let expected = allowed(&current, &event);
                match (current.apply(event.clone()), expected) {
                    (Ok(Next::State(next)), Some(Some(want))) => {
                        prop_assert_eq!(name(&next), want);
                        if let (VolumeEvent::Attach(a), VolumeState::Attached(b)) = (&event, &next) {
                            prop_assert_eq!(a, b);
                        }
                        state = Some(next);
                    }
                    (Ok(Next::Gone), Some(None)) => state = None,
                    (Err(e), None) => prop_assert_eq!(e.event, event.verb()),
                    (got, want) => prop_assert!(false, "{:?} + {:?}: got {:?}, table says {:?}",
                        current, event, got, want),
                }
            }
        }
    }
}
