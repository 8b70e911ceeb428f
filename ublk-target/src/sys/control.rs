//! Control commands on devices that already exist: list, inspect, stop, delete, and the driver's
//! feature set. Each call opens `/dev/ublk-control` afresh, so it works from any process.

use libublk::ctrl::UblkCtrl;
use libublk::{sys as ublk_sys, UblkError};
use thiserror::Error;

/// The ublk driver's control node.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Why a control command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The kernel has no ublk driver loaded.
    #[error("{CONTROL_PATH} is missing: the kernel has no ublk_drv (modprobe ublk_drv)")]
    NoControlDevice,
    /// No device has this id.
    #[error("no ublk device with id {0}")]
    UnknownDevice(u32),
    /// The device is not waiting for a new server.
    #[error("ublk device {id} is {state:?}, not quiesced: only a device whose server died can be recovered")]
    NotRecoverable {
        /// The device id.
        id: u32,
        /// Its state.
        state: DeviceState,
    },
    /// The kernel refused the command.
    #[error("ublk {action} of device {id} failed: {source}")]
    Command {
        /// What was being done.
        action: &'static str,
        /// The device id.
        id: u32,
        /// libublk's error.
        #[source]
        source: UblkError,
    },
}

/// The kernel's view of a device's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Added but not started, or stopped.
    Dead,
    /// Serving I/O.
    Live,
    /// Its server died; I/O waits for a recovering server.
    Quiesced,
    /// Its server died; I/O fails until recovery.
    FailIo,
    /// A state this build does not know.
    Unknown(u16),
}

impl From<u16> for DeviceState {
    fn from(raw: u16) -> Self {
        match u32::from(raw) {
            ublk_sys::UBLK_S_DEV_DEAD => DeviceState::Dead,
            ublk_sys::UBLK_S_DEV_LIVE => DeviceState::Live,
            ublk_sys::UBLK_S_DEV_QUIESCED => DeviceState::Quiesced,
            ublk_sys::UBLK_S_DEV_FAIL_IO => DeviceState::FailIo,
            _ => DeviceState::Unknown(raw),
        }
    }
}

/// What the kernel reports about one device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStatus {
    /// The device id.
    pub id: u32,
    /// Its state.
    pub state: DeviceState,
    /// Hardware queues.
    pub queues: u16,
    /// Depth per queue.
    pub depth: u16,
    /// Largest I/O in bytes.
    pub max_io_bytes: u32,
    /// Pid of the serving process (as the kernel last saw it).
    pub server_pid: i32,
    /// The `UBLK_F_*` flags it was created with.
    pub flags: u64,
}

fn require_control() -> Result<(), ControlError> {
    if std::path::Path::new(CONTROL_PATH).exists() {
        Ok(())
    } else {
        Err(ControlError::NoControlDevice)
    }
}

fn open(id: u32) -> Result<UblkCtrl, ControlError> {
    require_control()?;
    // Checked first: libublk prints to stderr when asked to open a device that does not exist.
    if !device_ids().contains(&id) {
        return Err(ControlError::UnknownDevice(id));
    }
    let raw = i32::try_from(id).map_err(|_| ControlError::UnknownDevice(id))?;
    UblkCtrl::new_simple(raw).map_err(|source| match source {
        UblkError::UringIOError(errno) if errno == -libc::ENODEV || errno == -libc::ENOENT => {
            ControlError::UnknownDevice(id)
        }
        source => ControlError::Command {
            action: "open",
            id,
            source,
        },
    })
}

/// Ids of every ublk device the kernel knows, ascending.
pub fn device_ids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/sys/class/ublk-char") else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("ublkc")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The kernel's view of device `id`.
pub fn status(id: u32) -> Result<DeviceStatus, ControlError> {
    let info = open(id)?.dev_info();
    Ok(DeviceStatus {
        id,
        state: DeviceState::from(info.state),
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        max_io_bytes: info.max_io_buf_bytes,
        server_pid: info.ublksrv_pid,
        flags: info.flags,
    })
}

/// Stops device `id`: its block device disappears and its server's queues wind down.
pub fn stop(id: u32) -> Result<(), ControlError> {
    open(id)?
        .kill_dev()
        .map_err(|source| ControlError::Command {
            action: "stop",
            id,
            source,
        })?;
    Ok(())
}

/// Deletes device `id` from the kernel (stopping it first if needed).
pub fn delete(id: u32) -> Result<(), ControlError> {
    open(id)?
        .del_dev()
        .map_err(|source| ControlError::Command {
            action: "delete",
            id,
            source,
        })?;
    Ok(())
}

/// Prepares quiesced device `id` for a new server (START_USER_RECOVERY, retried while the dead
/// server's resources are still being released).
pub fn start_recovery(id: u32) -> Result<(), ControlError> {
    let ctrl = open(id)?;
    let state = DeviceState::from(ctrl.dev_info().state);
    if state != DeviceState::Quiesced {
        return Err(ControlError::NotRecoverable { id, state });
    }
    match ctrl.start_user_recover() {
        Ok(0) => Ok(()),
        Ok(res) => Err(ControlError::Command {
            action: "start-recovery",
            id,
            source: UblkError::UringIOError(res),
        }),
        Err(source) => Err(ControlError::Command {
            action: "start-recovery",
            id,
            source,
        }),
    }
}

/// The driver's feature bits (GET_FEATURES, Linux 6.5+).
pub fn driver_features() -> Result<u64, ControlError> {
    require_control()?;
    UblkCtrl::get_features().ok_or(ControlError::Command {
        action: "get-features",
        id: 0,
        source: UblkError::OtherError(-libc::EOPNOTSUPP),
    })
}

/// Names of the `UBLK_F_*` feature bits, in bit order.
pub const FEATURE_NAMES: &[(u64, &str)] = &[
    (ublk_sys::UBLK_F_SUPPORT_ZERO_COPY as u64, "zero_copy"),
    (
        ublk_sys::UBLK_F_URING_CMD_COMP_IN_TASK as u64,
        "uring_cmd_comp_in_task",
    ),
    (ublk_sys::UBLK_F_NEED_GET_DATA as u64, "need_get_data"),
    (ublk_sys::UBLK_F_USER_RECOVERY as u64, "user_recovery"),
    (
        ublk_sys::UBLK_F_USER_RECOVERY_REISSUE as u64,
        "user_recovery_reissue",
    ),
    (ublk_sys::UBLK_F_UNPRIVILEGED_DEV as u64, "unprivileged_dev"),
    (ublk_sys::UBLK_F_CMD_IOCTL_ENCODE as u64, "cmd_ioctl_encode"),
    (ublk_sys::UBLK_F_USER_COPY as u64, "user_copy"),
    (ublk_sys::UBLK_F_ZONED as u64, "zoned"),
    (
        ublk_sys::UBLK_F_USER_RECOVERY_FAIL_IO as u64,
        "user_recovery_fail_io",
    ),
    (ublk_sys::UBLK_F_UPDATE_SIZE as u64, "update_size"),
    (ublk_sys::UBLK_F_AUTO_BUF_REG as u64, "auto_buf_reg"),
    (ublk_sys::UBLK_F_QUIESCE as u64, "quiesce"),
    (ublk_sys::UBLK_F_PER_IO_DAEMON as u64, "per_io_daemon"),
    (
        ublk_sys::UBLK_F_BUF_REG_OFF_DAEMON as u64,
        "buf_reg_off_daemon",
    ),
];

/// The names of the features set in `bits`, plus `unknown_bit_N` for bits this build cannot name.
pub fn feature_names(bits: u64) -> Vec<String> {
    let known: u64 = FEATURE_NAMES
        .iter()
        .map(|(bit, _)| bit)
        .fold(0, |acc, bit| acc | bit);
    let named = FEATURE_NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| (*name).to_owned());
    let unknown = (0..64)
        .filter(|n| bits & !known & (1 << n) != 0)
        .map(|n| format!("unknown_bit_{n}"));
    named.chain(unknown).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_bits_are_named_in_order() {
        let bits = (1 << 3) | (1 << 7) | (1 << 40);
        assert_eq!(
            feature_names(bits),
            ["user_recovery", "user_copy", "unknown_bit_40"]
        );
    }

    #[test]
    fn raw_states_map_to_names() {
        assert_eq!(DeviceState::from(1), DeviceState::Live);
        assert_eq!(DeviceState::from(2), DeviceState::Quiesced);
        assert_eq!(DeviceState::from(9), DeviceState::Unknown(9));
    }
}
