//! The latest figures each agent reported for its block devices (`POST /agent/v1/device_stats`),
//! kept for `/master/state` and the dashboard. They are monitoring data, not state: never
//! persisted, replaced by the agent's next report, and dropped once the agent is gone.

use mesoblk_proto::mesoblk::agent::v1 as agent;

use super::Master;
use crate::error::ApiError;

/// Most devices one report may describe (a bound on what a misbehaving agent can make us keep).
pub const MAX_DEVICES_PER_REPORT: usize = 10_000;

impl Master {
    /// Records `stats` as the agent's current device figures.
    pub fn device_stats(&mut self, stats: agent::DeviceStats) -> Result<(), ApiError> {
        let agent_id = stats.agent_id.value.clone();
        self.check_agent(&agent_id)?;
        if stats.devices.len() > MAX_DEVICES_PER_REPORT {
            return Err(ApiError::bad_request(format!(
                "A device report may describe at most {MAX_DEVICES_PER_REPORT} devices, not {}",
                stats.devices.len()
            )));
        }
        let agents = &self.agents;
        self.device_stats.retain(|id, _| agents.contains_key(id));
        self.device_stats.insert(agent_id, stats);
        Ok(())
    }

    /// The agent's last device report, while the agent is registered.
    pub fn agent_device_stats(&self, agent_id: &str) -> Option<&agent::DeviceStats> {
        self.agents
            .get(agent_id)
            .and(self.device_stats.get(agent_id))
    }
}
