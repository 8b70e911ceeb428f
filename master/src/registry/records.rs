//! What the registry stores ([`RegistrySnapshot`]) and the changes it accepts ([`Mutation`]).
//!
//! Every type here has a stable serde form (snake_case field and variant names); that form is the
//! on-disk format of the embedded store, so renaming a field is a format change. Mesos messages
//! (`AgentInfo`, `FrameworkInfo`, `QuotaConfig`, `Resource`) are stored as the base64 of their
//! protobuf encoding: their field numbers are already a stable schema, shared with Mesos.
//!
//! Applying a mutation is total and deterministic (upserts, and deletes that ignore missing
//! keys), so replaying a log can never fail half-way; the rules about *when* a mutation is
//! allowed belong to the state layer. [`Mutation::validate`] only refuses what could not be
//! stored faithfully (non-finite numbers, empty ids).

use std::collections::BTreeMap;

use mesoblk_proto::mesos::v1::quota::QuotaConfig;
use mesoblk_proto::mesos::v1::{AgentInfo, FrameworkInfo, Resource};
use serde::{Deserialize, Serialize};

/// Where an agent stands, as Mesos's registry keeps it (admitted, unreachable or gone lists).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Registered, or expected to re-register after a master restart.
    Admitted,
    /// Stopped answering; it may come back and re-register with its id.
    Unreachable {
        /// When it was marked unreachable (seconds since the epoch).
        time_secs: f64,
    },
    /// Marked gone by an operator; it may never come back with this id.
    Gone {
        /// When it was marked gone (seconds since the epoch).
        time_secs: f64,
    },
}

/// One agent the master has admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Its `AgentID` value (`<masterUUID>-S<n>`).
    pub id: String,
    /// Its hostname (also in `info`; kept in clear for people reading the log).
    pub hostname: String,
    /// Its last `AgentInfo`; absent for an agent only known as unreachable or gone.
    #[serde(default, with = "proto_b64::option")]
    pub info: Option<AgentInfo>,
    /// Admitted, unreachable or gone.
    pub state: AgentState,
}

/// One framework, live or removed. (Mesos does not store frameworks; mesoblk does, so a restarted
/// master recognises their ids and refuses removed ones.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkRecord {
    /// Its `FrameworkID` value (`<masterUUID>-<nnnn>`).
    pub id: String,
    /// Its latest `FrameworkInfo`, with `id` set.
    #[serde(with = "proto_b64")]
    pub info: FrameworkInfo,
    /// Its failover timeout in seconds (`info.failover_timeout`, validated).
    pub failover_timeout_secs: f64,
    /// Whether it was torn down or failed over too late: its id must be refused.
    pub removed: bool,
    /// When it first subscribed (seconds since the epoch).
    pub registered_time_secs: f64,
    /// When it was removed.
    #[serde(default)]
    pub unregistered_time_secs: Option<f64>,
}

/// Everything the registry holds. `Default` is the empty registry of a first start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// The master's UUID, prefix of every id it hands out; set once, on the first start.
    #[serde(default)]
    pub master_id: Option<String>,
    /// How many times a master has started on this registry ([`Mutation::Started`]). Ids that
    /// are not stored (offers, operations) can include it to stay unique across restarts.
    #[serde(default)]
    pub incarnation: u64,
    /// Agents by id.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentRecord>,
    /// Frameworks by id, removed ones included.
    #[serde(default)]
    pub frameworks: BTreeMap<String, FrameworkRecord>,
    /// Role weights set by UPDATE_WEIGHTS.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Quota configs by role.
    #[serde(default, with = "proto_b64::map")]
    pub quotas: BTreeMap<String, QuotaConfig>,
    /// Persistent volumes by agent id, then volume (persistence) id.
    #[serde(default, with = "proto_b64::nested_map")]
    pub volumes: BTreeMap<String, BTreeMap<String, Resource>>,
    /// Disks created by CREATE_DISK by agent id, then disk (source) id.
    #[serde(default, with = "proto_b64::nested_map")]
    pub disks: BTreeMap<String, BTreeMap<String, Resource>>,
}

impl RegistrySnapshot {
    /// The smallest `n` such that no stored framework id is `<master_id>-<m>` with `m >= n`: where
    /// a restarted master's framework counter resumes.
    pub fn next_framework_number(&self) -> u64 {
        self.next_number(self.frameworks.keys(), "-")
    }

    /// As [`RegistrySnapshot::next_framework_number`], for agent ids `<master_id>-S<n>`.
    pub fn next_agent_number(&self) -> u64 {
        self.next_number(self.agents.keys(), "-S")
    }

    fn next_number<'a>(&self, ids: impl Iterator<Item = &'a String>, infix: &str) -> u64 {
        let Some(master) = &self.master_id else {
            return 0;
        };
        let prefix = format!("{master}{infix}");
        ids.filter_map(|id| id.strip_prefix(&prefix)?.parse::<u64>().ok())
            .map(|n| n.saturating_add(1))
            .max()
            .unwrap_or(0)
    }
}

/// One change to the registry. A batch of them ([`super::Registry::apply`]) is atomic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Mutation {
    /// Records the master's UUID (replaces any earlier one).
    SetMasterId {
        /// The UUID.
        master_id: String,
    },
    /// A master started on this registry: bumps [`RegistrySnapshot::incarnation`].
    Started,
    /// Admits (or re-admits) an agent with its current `AgentInfo`.
    AdmitAgent {
        /// The agent's id.
        agent_id: String,
        /// Its `AgentInfo`.
        #[serde(with = "proto_b64")]
        info: AgentInfo,
    },
    /// Marks an agent unreachable (keeping its last info).
    MarkAgentUnreachable {
        /// The agent's id.
        agent_id: String,
        /// When (seconds since the epoch).
        time_secs: f64,
    },
    /// Marks an agent gone (keeping its last info).
    MarkAgentGone {
        /// The agent's id.
        agent_id: String,
        /// When (seconds since the epoch).
        time_secs: f64,
    },
    /// Forgets an agent, with its volumes and disks.
    RemoveAgent {
        /// The agent's id.
        agent_id: String,
    },
    /// Stores (or replaces) a framework.
    PutFramework {
        /// The record.
        framework: FrameworkRecord,
    },
    /// Forgets a framework entirely (garbage collection of removed ones).
    RemoveFramework {
        /// The framework's id.
        framework_id: String,
    },
    /// Sets the weights of the given roles; other roles keep theirs.
    UpdateWeights {
        /// Weight by role.
        weights: BTreeMap<String, f64>,
    },
    /// Sets the quota of each config's role; a config with neither guarantees nor limits
    /// removes the role's quota (Mesos's UPDATE_QUOTA).
    UpdateQuotas {
        /// The configs.
        #[serde(with = "proto_b64::vec")]
        configs: Vec<QuotaConfig>,
    },
    /// Stores a persistent volume of an agent.
    PutVolume {
        /// The agent's id.
        agent_id: String,
        /// The volume's persistence id.
        volume_id: String,
        /// The volume as a `Resource`.
        #[serde(with = "proto_b64")]
        resource: Resource,
    },
    /// Forgets a persistent volume.
    RemoveVolume {
        /// The agent's id.
        agent_id: String,
        /// The volume's persistence id.
        volume_id: String,
    },
    /// Stores a disk created by CREATE_DISK on an agent.
    PutDisk {
        /// The agent's id.
        agent_id: String,
        /// The disk's source id.
        disk_id: String,
        /// The disk as a `Resource`.
        #[serde(with = "proto_b64")]
        resource: Resource,
    },
    /// Forgets a created disk.
    RemoveDisk {
        /// The agent's id.
        agent_id: String,
        /// The disk's source id.
        disk_id: String,
    },
}

fn finite(what: &str, value: f64) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("{what} must be a finite number, not {value}"))
    }
}

fn non_empty(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{what} must not be empty"))
    } else {
        Ok(())
    }
}

impl Mutation {
    /// Refuses what the store could not keep faithfully: empty keys and non-finite numbers
    /// (JSON has no NaN). Quota values are protobuf-encoded, so any double survives.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Mutation::SetMasterId { master_id } => non_empty("the master id", master_id),
            Mutation::Started => Ok(()),
            Mutation::AdmitAgent { agent_id, .. } | Mutation::RemoveAgent { agent_id } => {
                non_empty("the agent id", agent_id)
            }
            Mutation::MarkAgentUnreachable {
                agent_id,
                time_secs,
            }
            | Mutation::MarkAgentGone {
                agent_id,
                time_secs,
            } => {
                non_empty("the agent id", agent_id)?;
                finite("the time", *time_secs)
            }
            Mutation::PutFramework { framework } => {
                non_empty("the framework id", &framework.id)?;
                finite("the failover timeout", framework.failover_timeout_secs)?;
                finite("the registration time", framework.registered_time_secs)?;
                finite(
                    "the removal time",
                    framework.unregistered_time_secs.unwrap_or(0.0),
                )
            }
            Mutation::RemoveFramework { framework_id } => {
                non_empty("the framework id", framework_id)
            }
            Mutation::UpdateWeights { weights } => weights.iter().try_for_each(|(role, w)| {
                non_empty("the role", role)?;
                finite("a weight", *w)
            }),
            Mutation::UpdateQuotas { configs } => configs
                .iter()
                .try_for_each(|c| non_empty("the quota's role", &c.role)),
            Mutation::PutVolume {
                agent_id,
                volume_id: id,
                ..
            }
            | Mutation::RemoveVolume {
                agent_id,
                volume_id: id,
            }
            | Mutation::PutDisk {
                agent_id,
                disk_id: id,
                ..
            }
            | Mutation::RemoveDisk {
                agent_id,
                disk_id: id,
            } => {
                non_empty("the agent id", agent_id)?;
                non_empty("the resource id", id)
            }
        }
    }

    /// Applies the mutation to `state`. Total: never fails, whatever `state` holds.
    pub fn apply_to(self, state: &mut RegistrySnapshot) {
        match self {
            Mutation::SetMasterId { master_id } => state.master_id = Some(master_id),
            Mutation::Started => state.incarnation = state.incarnation.saturating_add(1),
            Mutation::AdmitAgent { agent_id, info } => {
                let record = AgentRecord {
                    id: agent_id.clone(),
                    hostname: info.hostname.clone(),
                    info: Some(info),
                    state: AgentState::Admitted,
                };
                state.agents.insert(agent_id, record);
            }
            Mutation::MarkAgentUnreachable {
                agent_id,
                time_secs,
            } => set_agent_state(state, agent_id, AgentState::Unreachable { time_secs }),
            Mutation::MarkAgentGone {
                agent_id,
                time_secs,
            } => set_agent_state(state, agent_id, AgentState::Gone { time_secs }),
            Mutation::RemoveAgent { agent_id } => {
                state.agents.remove(&agent_id);
                state.volumes.remove(&agent_id);
                state.disks.remove(&agent_id);
            }
            Mutation::PutFramework { framework } => {
                state.frameworks.insert(framework.id.clone(), framework);
            }
            Mutation::RemoveFramework { framework_id } => {
                state.frameworks.remove(&framework_id);
            }
            Mutation::UpdateWeights { weights } => state.weights.extend(weights),
            Mutation::UpdateQuotas { configs } => {
                for config in configs {
                    if config.guarantees.is_empty() && config.limits.is_empty() {
                        state.quotas.remove(&config.role);
                    } else {
                        state.quotas.insert(config.role.clone(), config);
                    }
                }
            }
            Mutation::PutVolume {
                agent_id,
                volume_id,
                resource,
            } => {
                let volumes = state.volumes.entry(agent_id).or_default();
                volumes.insert(volume_id, resource);
            }
            Mutation::RemoveVolume {
                agent_id,
                volume_id,
            } => remove_nested(&mut state.volumes, &agent_id, &volume_id),
            Mutation::PutDisk {
                agent_id,
                disk_id,
                resource,
            } => {
                state
                    .disks
                    .entry(agent_id)
                    .or_default()
                    .insert(disk_id, resource);
            }
            Mutation::RemoveDisk { agent_id, disk_id } => {
                remove_nested(&mut state.disks, &agent_id, &disk_id);
            }
        }
    }
}

fn set_agent_state(state: &mut RegistrySnapshot, agent_id: String, new: AgentState) {
    let record = state
        .agents
        .entry(agent_id.clone())
        .or_insert_with(|| AgentRecord {
            id: agent_id,
            hostname: String::new(),
            info: None,
            state: new,
        });
    record.state = new;
}

fn remove_nested(map: &mut BTreeMap<String, BTreeMap<String, Resource>>, agent_id: &str, id: &str) {
    if let Some(inner) = map.get_mut(agent_id) {
        inner.remove(id);
        if inner.is_empty() {
            map.remove(agent_id);
        }
    }
}

/// Serde adapters storing prost messages as base64 of their protobuf encoding.
mod proto_b64 {
    use std::collections::BTreeMap;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn encode<M: prost::Message>(message: &M) -> String {
        STANDARD.encode(message.encode_to_vec())
    }

    fn decode<M: prost::Message + Default, E: serde::de::Error>(text: &str) -> Result<M, E> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| E::custom(format!("bad base64: {e}")))?;
        M::decode(bytes.as_slice()).map_err(|e| E::custom(format!("bad protobuf: {e}")))
    }

    pub(super) fn serialize<M: prost::Message, S: Serializer>(
        message: &M,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        encode(message).serialize(serializer)
    }

    pub(super) fn deserialize<'de, M: prost::Message + Default, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<M, D::Error> {
        decode(&String::deserialize(deserializer)?)
    }

    pub(super) mod option {
        use super::*;

        pub(in super::super) fn serialize<M: prost::Message, S: Serializer>(
            message: &Option<M>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            message.as_ref().map(encode).serialize(serializer)
        }

        pub(in super::super) fn deserialize<
            'de,
            M: prost::Message + Default,
            D: Deserializer<'de>,
        >(
            deserializer: D,
        ) -> Result<Option<M>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| decode(&text))
                .transpose()
        }
    }

    pub(super) mod vec {
        use super::*;

        pub(in super::super) fn serialize<M: prost::Message, S: Serializer>(
            messages: &[M],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(messages.iter().map(encode))
        }

        pub(in super::super) fn deserialize<
            'de,
            M: prost::Message + Default,
            D: Deserializer<'de>,
        >(
            deserializer: D,
        ) -> Result<Vec<M>, D::Error> {
            Vec::<String>::deserialize(deserializer)?
                .iter()
                .map(|text| decode(text))
                .collect()
        }
    }

    pub(super) mod map {
        use super::*;

        pub(in super::super) fn serialize<M: prost::Message, S: Serializer>(
            messages: &BTreeMap<String, M>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_map(messages.iter().map(|(k, m)| (k, encode(m))))
        }

        pub(in super::super) fn deserialize<
            'de,
            M: prost::Message + Default,
            D: Deserializer<'de>,
        >(
            deserializer: D,
        ) -> Result<BTreeMap<String, M>, D::Error> {
            BTreeMap::<String, String>::deserialize(deserializer)?
                .into_iter()
                .map(|(k, text)| Ok((k, decode(&text)?)))
                .collect()
        }
    }

    pub(super) mod nested_map {
        use super::*;

        pub(in super::super) fn serialize<M: prost::Message, S: Serializer>(
            messages: &BTreeMap<String, BTreeMap<String, M>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            let encoded: BTreeMap<&String, BTreeMap<&String, String>> = messages
                .iter()
                .map(|(k, inner)| (k, inner.iter().map(|(i, m)| (i, encode(m))).collect()))
                .collect();
            encoded.serialize(serializer)
        }

        pub(in super::super) fn deserialize<
            'de,
            M: prost::Message + Default,
            D: Deserializer<'de>,
        >(
            deserializer: D,
        ) -> Result<BTreeMap<String, BTreeMap<String, M>>, D::Error> {
            let raw = BTreeMap::<String, BTreeMap<String, String>>::deserialize(deserializer)?;
            let mut out = BTreeMap::new();
            for (k, inner) in raw {
                let mut decoded = BTreeMap::new();
                for (i, text) in inner {
                    decoded.insert(i, decode(&text)?);
                }
                out.insert(k, decoded);
            }
            Ok(out)
        }
    }
}
