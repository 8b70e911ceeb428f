//! The books ⇄ the registry (`crate::registry`): [`Master::recover`] rebuilds them from a
//! snapshot at start, and the `persist_*` helpers record each change while the master lock is
//! held, so nothing is visible or acknowledged before it is stored.
//!
//! What is persisted: frameworks, weights, quotas, agents (admitted, unreachable, gone) and each
//! agent's persistent volumes and created disks. Call sites (the whole hook): `recover` from the
//! binary before serving (frameworks here; agents in `recovered_agents`, volumes and disks in
//! `stored_resources`); `persist_framework` in SUBSCRIBE (before SUBSCRIBED is sent) and
//! UPDATE_FRAMEWORK; `persist_removal` in `remove_framework` (before the completed list is
//! trimmed); `persist_weights` and `persist_quotas` in UPDATE_WEIGHTS and UPDATE_QUOTA (before the
//! reply); `persist_agent` in agent registration and re-registration (before `Registered` is
//! answered; it stores the agent with its total, volumes and disks, reconciled with its report);
//! `persist_agent_resources` after an ACCEPT whose CREATE/DESTROY the allocator applied and when a
//! CREATE_DISK/DESTROY_DISK finishes; `persist_agent_removal` when an agent becomes unreachable;
//! `mark_agent_gone` (MARK_AGENT_GONE, stored before anything changes); the recovered agents'
//! deadline (`--agent_reregister_timeout`) marks those that did not come back unreachable.
//!
//! A registry error is fatal by the registry's contract (the embedded store exits the process
//! before any caller sees it); here it is logged, and the operator calls answer 503.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesoblk_proto::mesos::v1::quota::QuotaConfig;
use tracing::{error, info, warn};

use super::frameworks::{CompletedFramework, Framework};
use super::{quota_config, validation, Effect, Master};
use crate::error::ApiError;
use crate::registry::{epoch_secs, FrameworkRecord, Mutation, RegistryError, RegistrySnapshot};

/// The least time a framework that was live when the master stopped gets to resubscribe: a master
/// restart is not the framework's failure (Mesos's `--agent_reregister_timeout` default).
pub(super) const RECOVERED_FRAMEWORK_GRACE: Duration = Duration::from_secs(600);

pub(super) fn from_epoch_secs(secs: f64) -> SystemTime {
    Duration::try_from_secs_f64(secs.max(0.0))
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .unwrap_or(UNIX_EPOCH)
}

fn record(framework: &Framework, removed_at: Option<SystemTime>) -> FrameworkRecord {
    let id = framework
        .info
        .id
        .as_ref()
        .map(|id| id.value.clone())
        .unwrap_or_default();
    FrameworkRecord {
        id,
        info: framework.info.clone(),
        failover_timeout_secs: validation::failover_timeout(&framework.info)
            .unwrap_or_default()
            .as_secs_f64(),
        removed: removed_at.is_some(),
        registered_time_secs: epoch_secs(framework.registered_time),
        unregistered_time_secs: removed_at.map(epoch_secs),
    }
}

impl Master {
    /// Rebuilds the books from the registry, before serving: the master's UUID and id
    /// counters, weights and quotas (also in the allocator), removed frameworks (their ids are
    /// refused; the oldest beyond `--max_completed_frameworks` are forgotten, here and in the
    /// registry), and live frameworks as recovered (disconnected, not in the allocator until
    /// they resubscribe), each removed unless it resubscribes within its failover timeout, or
    /// `RECOVERED_FRAMEWORK_GRACE` (10 minutes) if that is longer, from now.
    pub fn recover(&mut self, snapshot: &RegistrySnapshot) {
        if let Some(id) = &snapshot.master_id {
            self.info.id.clone_from(id);
        }
        self.next_framework_id = self.next_framework_id.max(snapshot.next_framework_number());
        self.next_agent_id = self.next_agent_id.max(snapshot.next_agent_number());
        self.allocator
            .start_offer_ids_at(snapshot.incarnation.saturating_mul(1 << 32));
        for (role, weight) in &snapshot.weights {
            match self.allocator.set_weight(role, *weight) {
                Ok(()) => {
                    self.weights.insert(role.clone(), *weight);
                }
                Err(e) => warn!(%role, "dropping a stored weight the allocator refuses: {e}"),
            }
        }
        for config in snapshot.quotas.values() {
            let applied = quota_config(config).map_err(|e| e.message).and_then(|q| {
                self.allocator
                    .set_quota(&config.role, q)
                    .map_err(|e| e.to_string())
            });
            match applied {
                Ok(()) => {
                    self.quotas.insert(config.role.clone(), config.clone());
                }
                Err(e) => warn!(role = %config.role, "dropping a stored quota: {e}"),
            }
        }
        self.recover_stored_frameworks(snapshot);
        self.stored.recover(snapshot);
        self.recover_agents(snapshot);
        info!(
            master = %self.info.id,
            frameworks = self.frameworks.len(),
            completed = self.completed.len(),
            "recovered the books from the registry"
        );
    }

    fn recover_stored_frameworks(&mut self, snapshot: &RegistrySnapshot) {
        let mut removed: Vec<&FrameworkRecord> =
            snapshot.frameworks.values().filter(|f| f.removed).collect();
        removed.sort_by(|a, b| {
            let time = |f: &FrameworkRecord| f.unregistered_time_secs.unwrap_or(0.0);
            time(a).total_cmp(&time(b))
        });
        let keep = self.config.max_completed_frameworks;
        let forgotten = removed.len().saturating_sub(keep);
        let forget: Vec<Mutation> = removed[..forgotten]
            .iter()
            .map(|f| Mutation::RemoveFramework {
                framework_id: f.id.clone(),
            })
            .collect();
        let _ = self.persist(
            "forget old removed frameworks",
            self.config.registry.apply(forget),
        );
        self.completed.clear();
        for f in &removed[forgotten..] {
            self.completed.push_back(CompletedFramework {
                info: f.info.clone(),
                registered_time: from_epoch_secs(f.registered_time_secs),
                unregistered_time: from_epoch_secs(f.unregistered_time_secs.unwrap_or(0.0)),
                completed_tasks: Default::default(),
            });
        }
        for f in snapshot.frameworks.values().filter(|f| !f.removed) {
            let timeout = validation::failover_timeout(&f.info)
                .unwrap_or_default()
                .max(RECOVERED_FRAMEWORK_GRACE);
            self.frameworks.insert(
                f.id.clone(),
                Framework {
                    info: f.info.clone(),
                    connection: None,
                    active: false,
                    recovered: true,
                    suppressed_roles: Default::default(),
                    offer_constraints: None,
                    registered_time: from_epoch_secs(f.registered_time_secs),
                    reregistered_time: None,
                    generation: 0,
                    completed_tasks: Default::default(),
                },
            );
            self.effects.push(Effect::FailoverTimer {
                framework_id: f.id.clone(),
                generation: 0,
                timeout,
            });
        }
    }

    /// Logs a failed registry write; `Err` is 503 for callers that answer a request.
    pub(super) fn persist(
        &self,
        what: &str,
        result: Result<(), RegistryError>,
    ) -> Result<(), ApiError> {
        result.map_err(|e| {
            error!(what, "the registry refused a change: {e}");
            ApiError::service_unavailable(format!("Failed to update the registry: {e}"))
        })
    }

    /// Stores a framework as it is now (SUBSCRIBE, UPDATE_FRAMEWORK).
    pub(super) fn persist_framework(&self, framework_id: &str) {
        if let Some(framework) = self.frameworks.get(framework_id) {
            let record = record(framework, None);
            let _ = self.persist(
                "store a framework",
                self.config.registry.put_framework(record),
            );
        }
    }

    /// Stores `framework` as removed, in one batch with forgetting the completed frameworks
    /// that its removal pushes out of the bounded completed list. Call before the list is
    /// trimmed.
    pub(super) fn persist_removal(&self, framework: &Framework) {
        let keep = self.config.max_completed_frameworks;
        let removed = record(framework, Some(SystemTime::now()));
        let mut batch = vec![if keep == 0 {
            // Not remembered in memory either: its id will be taken as a recovering framework.
            Mutation::RemoveFramework {
                framework_id: removed.id,
            }
        } else {
            Mutation::PutFramework { framework: removed }
        }];
        let evicted = if keep == 0 {
            0
        } else {
            (self.completed.len() + 1).saturating_sub(keep)
        };
        batch.extend(self.completed.iter().take(evicted).filter_map(|c| {
            Some(Mutation::RemoveFramework {
                framework_id: c.info.id.as_ref()?.value.clone(),
            })
        }));
        let _ = self.persist(
            "store a removed framework",
            self.config.registry.apply(batch),
        );
    }

    /// Admits an agent as it is now (registration, re-registration), with its volumes and
    /// disks reconciled (`stored_resources`: the agent's report wins).
    pub(super) fn persist_agent(&mut self, agent_id: &str) {
        self.persist_agent_resources(agent_id, true);
    }

    /// Records that an agent became unreachable at `time`.
    pub(super) fn persist_agent_removal(&self, agent_id: &str, time: SystemTime) {
        let result = self.config.registry.mark_agent_unreachable(agent_id, time);
        let _ = self.persist("record an unreachable agent", result);
    }

    /// Stores role weights (UPDATE_WEIGHTS).
    pub(super) fn persist_weights(&self, weights: &[(String, f64)]) -> Result<(), ApiError> {
        self.persist("store weights", self.config.registry.set_weights(weights))
    }

    /// Stores quota configs (UPDATE_QUOTA).
    pub(super) fn persist_quotas(&self, configs: &[QuotaConfig]) -> Result<(), ApiError> {
        self.persist("store quotas", self.config.registry.set_quotas(configs))
    }
}
