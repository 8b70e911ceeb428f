//! Why a storage request failed, and what a framework is told about it.
//!
//! Messages are one sentence without their cause; [`error_chain`] joins an error with its
//! causes into the one line that goes into `OperationStatus.message` or `TaskStatus.message`
//! (see [`StorageError::message`]). Every error is returned only after whatever the failed
//! request had made was removed again (backing file, record, device, mount).

use std::path::{Path, PathBuf};

use mesoblk_proto::mesos::v1::{task_status, OperationState, TaskState};
use thiserror::Error;

use super::config::ConfigError;
use super::volume::{TransitionError, VolumeId};

/// An error from one of the host's services (device server, control commands).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a storage request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Block pools are configured but the kernel has no ublk.
    #[error(
        "block pools are configured but ublk is not available ({control} is missing: load \
         ublk_drv), so no disk can be served; configure no pools to run without block storage"
    )]
    UblkUnavailable {
        /// The ublk control node that is missing.
        control: PathBuf,
    },
    /// The device server binary is missing.
    #[error(
        "the device server binary {path} does not exist (build it: cargo build -p ublk-target)"
    )]
    TargetMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A disk resource that does not describe one of this agent's pools or volumes.
    #[error("invalid disk resource: {reason}")]
    BadDiskResource {
        /// What is wrong with it.
        reason: String,
    },
    /// A disk resource from another resource provider.
    #[error(
        "disk resource from unknown resource provider {provider:?} (this agent's is {ours:?})"
    )]
    UnknownProvider {
        /// The provider named.
        provider: String,
        /// This agent's provider.
        ours: String,
    },
    /// A profile this agent does not have.
    #[error("unknown disk profile {profile:?} (this agent has: {known})")]
    UnknownProfile {
        /// The profile named.
        profile: String,
        /// The configured profiles, comma-separated.
        known: String,
    },
    /// A CREATE_DISK target other than BLOCK or MOUNT.
    #[error("CREATE_DISK target type {target} is not supported: use BLOCK or MOUNT")]
    UnsupportedTarget {
        /// The target type asked for.
        target: String,
    },
    /// A disk size that is not a positive whole number of MB.
    #[error("disk size {mb} MB is not a positive whole number of MB")]
    BadSize {
        /// The size asked for.
        mb: f64,
    },
    /// The pool has less room than asked for.
    #[error(
        "pool {pool:?} (profile {profile:?}) has {available_mb} MB available; {requested_mb} MB \
         were asked for"
    )]
    InsufficientCapacity {
        /// The pool.
        pool: String,
        /// The profile.
        profile: String,
        /// What was asked for.
        requested_mb: u64,
        /// What is left.
        available_mb: u64,
    },
    /// No volume has this id.
    #[error("no volume {id} on this agent")]
    UnknownVolume {
        /// The id.
        id: String,
    },
    /// The resource names a volume of another type or size than the one recorded.
    #[error("disk resource does not match volume {id}: {reason}")]
    VolumeMismatch {
        /// The volume.
        id: VolumeId,
        /// What differs.
        reason: String,
    },
    /// The volume's state does not allow the request.
    #[error("volume {id}")]
    Transition {
        /// The volume.
        id: VolumeId,
        /// The refused transition.
        #[source]
        source: TransitionError,
    },
    /// Formatting a MOUNT volume failed.
    #[error("formatting volume {volume} as {filesystem} failed: {message}")]
    Mkfs {
        /// The volume.
        volume: VolumeId,
        /// The file system.
        filesystem: &'static str,
        /// What mkfs said (its last lines of output).
        message: String,
    },
    /// Starting, probing or stopping a volume's device failed.
    #[error("cannot {action} the device of volume {volume}")]
    Device {
        /// The volume.
        volume: VolumeId,
        /// What was being done (`start`, `stop`, `recover`).
        action: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Mounting or unmounting a MOUNT volume failed.
    #[error("cannot {action} volume {volume} at {target}")]
    Mount {
        /// The volume.
        volume: VolumeId,
        /// `mount` or `unmount`.
        action: &'static str,
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A container path that would leave the sandbox, or is not a path.
    #[error("container path {path:?} must be a relative path inside the sandbox without '..'")]
    BadContainerPath {
        /// The path given.
        path: String,
    },
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// A closure turning an I/O error into [`StorageError::Io`].
    pub fn io(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
        let what = what.into();
        let path = path.to_owned();
        move |source| StorageError::Io { what, path, source }
    }

    /// The whole error in one line, causes included: what a framework is told.
    pub fn message(&self) -> String {
        error_chain(self)
    }

    /// Whether the request itself was wrong (as opposed to the host failing to carry it out).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StorageError::BadDiskResource { .. }
                | StorageError::UnknownProvider { .. }
                | StorageError::UnknownProfile { .. }
                | StorageError::UnsupportedTarget { .. }
                | StorageError::BadSize { .. }
                | StorageError::InsufficientCapacity { .. }
                | StorageError::UnknownVolume { .. }
                | StorageError::VolumeMismatch { .. }
                | StorageError::Transition { .. }
                | StorageError::BadContainerPath { .. }
        )
    }

    /// The state of a CREATE_DISK / DESTROY_DISK that failed with this error.
    pub fn operation_state(&self) -> OperationState {
        OperationState::OperationFailed
    }

    /// The state and reason of a task whose disks could not be set up: `TASK_ERROR`, with
    /// `REASON_TASK_INVALID` when the task asked for something wrong and
    /// `REASON_CONTAINER_LAUNCH_FAILED` when the host failed (mkfs, device, mount).
    pub fn task_outcome(&self) -> (TaskState, task_status::Reason) {
        let reason = if self.is_bad_input() {
            task_status::Reason::TaskInvalid
        } else {
            task_status::Reason::ContainerLaunchFailed
        };
        (TaskState::TaskError, reason)
    }
}

/// `error: cause: cause's cause`, skipping a cause whose text the previous message already ends
/// with (some errors repeat their source in their own message).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_include_their_causes_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = StorageError::io("create", Path::new("/srv/x"))(inner);
        assert_eq!(err.message(), "cannot create /srv/x: denied");
        // A source that repeats its own cause (as some ublk-target errors do) is not doubled.
        #[derive(Debug, Error)]
        #[error("spawn failed: boom")]
        struct Repeats(#[source] std::io::Error);
        let err = StorageError::Device {
            volume: VolumeId::parse("vol-1").unwrap(),
            action: "start",
            source: Box::new(Repeats(std::io::Error::other("boom"))),
        };
        assert_eq!(
            err.message(),
            "cannot start the device of volume vol-1: spawn failed: boom"
        );
        assert_eq!(
            err.task_outcome().1,
            task_status::Reason::ContainerLaunchFailed
        );
    }
}
