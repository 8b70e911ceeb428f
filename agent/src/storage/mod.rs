//! Block storage: the agent's pools and profiles, the Mesos disk resources they become, volumes
//! made by CREATE_DISK and destroyed by DESTROY_DISK, and the ublk devices that serve them to
//! tasks.
//!
//! # Pieces
//!
//! - [`config`]: pools (a folder of sparse files, a size, an overcommit ratio) and profiles
//!   (a pool, cache mode, QoS, file system, queues/depth), parsed from JSON and checked against
//!   the agent's allow-list of pool folders (`--block_pool_dirs`).
//! - [`resources`]: the RAW disks the agent reports per profile, the BLOCK/MOUNT disks of its
//!   volumes, what a disk resource asks for, and the capacity accounting (pure).
//! - [`volume`]: volume ids, records and the volume state machine (pure).
//! - [`records`]: crash-safe persistence of volume records in `<work dir>/storage`.
//! - [`host`]: device servers (`ublk-target`), mounts and mkfs behind traits;
//!   [`testing`] has fakes of them.
//! - [`Storage`]: everything together — `create_disk`, `destroy_disk`, `attach`/`detach`,
//!   `attach_task`/`detach_task` (and [`attach_task_shared`], which holds the agent's storage
//!   lock only around the books, not while device servers start), `recover`, `resources`.
//! - `spares`: devices started ahead of their tasks for the sizes a profile names
//!   ([`make_spares`]); a matching launch claims one instead of starting a device.
//!
//! # A volume's life
//!
//! CREATE_DISK (or a task launched on a slice of a RAW pool) makes a volume: its record is
//! written as `Creating`, then `<pool dir>/<volume id>.img` is created sparse with the volume's
//! size, a MOUNT volume is formatted right there (mkfs on the file: once, at creation, so a
//! failing mkfs fails the CREATE_DISK with nothing left behind), and the record becomes `Ready`.
//! Attaching starts one `mesoblk-target serve` process for the volume's device with the
//! profile's queues, depth and QoS; detaching stops it. DESTROY_DISK marks the record
//! `Destroying`, deletes the file, then the record. Ephemeral volumes (a task on a RAW slice)
//! are destroyed by [`Storage::detach_task`] when their task ends.
//!
//! Every failure is a [`StorageError`] whose [`message`](StorageError::message) goes into
//! `OPERATION_FAILED` or `TASK_ERROR`, and nothing the failed request made is left behind.

pub mod config;
pub mod error;
pub mod host;
pub mod idle_servers;
pub mod records;
pub mod resources;
pub mod testing;
pub mod volume;

mod attach;
mod manager;
mod recovery;
mod spares;
mod task_disks;

pub use attach::{
    task_env, AttachRequest, AttachedDevice, TaskDiskRequest, TaskDisks, ENV_BLOCK_DEVICE,
    ENV_DISK_PREFIX, ENV_MOUNT_PATH,
};
pub use config::{Filesystem, StorageConfig};
pub use error::{error_chain, StorageError};
pub use manager::{check_ublk, default_target_exe, Storage, StorageOptions, DEFAULT_RUN_DIR};
pub use recovery::RecoveryReport;
pub use spares::{make_spares, Spare};
pub use task_disks::{attach_task_shared, StartedDevices, TaskReservation};
pub use volume::{VolumeId, VolumeKind};
