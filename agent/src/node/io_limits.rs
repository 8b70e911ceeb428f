//! The `io.max` limits of a task's block devices, from the QoS of their profiles: what the
//! command executor and the executor API put in the cgroup of the task (or of its executor).

use super::{lock, Node};
use crate::executor::IoLimits;
use crate::storage::AttachedDevice;

impl Node {
    /// One entry per device whose profile sets a rate (a device without QoS gets no line).
    pub(super) fn io_limits(&self, devices: &[AttachedDevice]) -> Vec<IoLimits> {
        let storage = lock(&self.storage);
        devices
            .iter()
            .filter_map(|device| {
                let volume = storage.volume(&device.volume_id)?;
                let profile = storage.config().profile(&volume.profile)?;
                let (major, minor) = device.device_number;
                IoLimits::from_qos(
                    u32::try_from(major).ok()?,
                    u32::try_from(minor).ok()?,
                    &profile.qos,
                )
            })
            .collect()
    }
}
