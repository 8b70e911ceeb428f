//! The operator API's event stream (`POST /api/v1` SUBSCRIBE) on the master's side: the one list
//! of subscriber queues, `Master::publish` that fans an event out to them, the hooks the rest
//! of the state calls where frameworks, agents and tasks change, and the v1 views of one
//! framework or agent that those events carry (GET_FRAMEWORKS and GET_AGENTS list the same).
//!
//! As in Mesos: FRAMEWORK_ADDED when a framework is added (subscribed, or recovered from a
//! re-registering agent), FRAMEWORK_UPDATED when it resubscribes, disconnects or is updated,
//! FRAMEWORK_REMOVED when it is removed; AGENT_ADDED when an agent is admitted (registered, or
//! re-admitted after removal or a master restart), AGENT_REMOVED when it is removed; TASK_ADDED
//! when a task is launched, TASK_UPDATED when a status update changes a task's state.
//!
//! Each subscriber has a bounded queue (`Config::event_queue_max`). A subscriber whose queue is
//! full is dropped, which ends its stream once the queued events are written (Mesos closes it):
//! a slow reader never holds the master up.

use mesoblk_proto::mesos::v1::master::{event, response, Event};
use mesoblk_proto::mesos::v1::{AgentId, FrameworkId, FrameworkInfo, TaskStatus};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::tasks::TaskKey;
use super::{convert, time_info, Master};
use crate::allocator::{AgentId as AllocAgentId, ResourceSet};
use crate::stream::{event_queue, EventQueue, EventSender};

/// Operator subscribers' queues.
pub type OperatorSubscribers = Vec<EventSender<Event>>;

/// An operator event of `kind` with no body.
pub fn operator_event(kind: event::Type) -> Event {
    Event {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

impl Master {
    /// A new operator subscriber whose stream starts with `first` (SUBSCRIBED, built under the
    /// same lock, so no change falls between the snapshot and the events that follow it).
    pub fn add_operator_subscriber(&mut self, first: Event) -> EventQueue<Event> {
        let (queue, events) = event_queue(self.config.event_queue_max);
        // The queue is new and its bound is positive (`Config::validate`).
        let _ = queue.try_send(Box::new(first));
        self.operator_subscribers.retain(|q| !q.is_closed());
        self.operator_subscribers.push(queue);
        events
    }

    /// Live operator subscribers.
    pub fn operator_subscriber_count(&self) -> usize {
        self.operator_subscribers
            .iter()
            .filter(|q| !q.is_closed())
            .count()
    }

    /// Fans the event `build` makes out to every operator subscriber; it is built only when
    /// someone listens. Gone subscribers are forgotten, full ones dropped.
    pub(super) fn publish(&mut self, build: impl FnOnce(&Master) -> Option<Event>) {
        if self.operator_subscribers.is_empty() {
            return;
        }
        let Some(event) = build(self) else {
            return;
        };
        self.operator_subscribers
            .retain(|queue| match queue.try_send(Box::new(event.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!("operator event queue full; closing the subscriber's stream");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("operator subscriber gone");
                    false
                }
            });
    }

    /// FRAMEWORK_ADDED (`added`) or FRAMEWORK_UPDATED for a registered framework.
    pub(super) fn publish_framework(&mut self, framework_id: &str, added: bool) {
        self.publish(|m| {
            let framework = m.framework_view(framework_id)?;
            Some(if added {
                Event {
                    framework_added: Some(event::FrameworkAdded { framework }),
                    ..operator_event(event::Type::FrameworkAdded)
                }
            } else {
                Event {
                    framework_updated: Some(event::FrameworkUpdated { framework }),
                    ..operator_event(event::Type::FrameworkUpdated)
                }
            })
        });
    }

    /// FRAMEWORK_REMOVED.
    pub(super) fn publish_framework_removed(&mut self, info: &FrameworkInfo) {
        self.publish(|_| {
            Some(Event {
                framework_removed: Some(event::FrameworkRemoved {
                    framework_info: info.clone(),
                }),
                ..operator_event(event::Type::FrameworkRemoved)
            })
        });
    }

    /// AGENT_ADDED.
    pub(super) fn publish_agent_added(&mut self, agent_id: &str) {
        self.publish(|m| {
            Some(Event {
                agent_added: Some(event::AgentAdded {
                    agent: m.agent_view(agent_id)?,
                }),
                ..operator_event(event::Type::AgentAdded)
            })
        });
    }

    /// AGENT_REMOVED.
    pub(super) fn publish_agent_removed(&mut self, agent_id: &str) {
        self.publish(|_| {
            Some(Event {
                agent_removed: Some(event::AgentRemoved {
                    agent_id: AgentId {
                        value: agent_id.into(),
                    },
                }),
                ..operator_event(event::Type::AgentRemoved)
            })
        });
    }

    /// TASK_ADDED for a booked task.
    pub(super) fn publish_task_added(&mut self, key: &TaskKey) {
        self.publish(|m| {
            Some(Event {
                task_added: Some(event::TaskAdded {
                    task: m.tasks.get(key)?.task.clone(),
                }),
                ..operator_event(event::Type::TaskAdded)
            })
        });
    }

    /// TASK_UPDATED: the task's state is now `state` after `status` (its `data` left out, as
    /// in the task's own statuses).
    pub(super) fn publish_task_updated(&mut self, key: &TaskKey, status: &TaskStatus, state: i32) {
        self.publish(|_| {
            let mut status = status.clone();
            status.data = None;
            Some(Event {
                task_updated: Some(event::TaskUpdated {
                    framework_id: FrameworkId {
                        value: key.0.clone(),
                    },
                    status,
                    state,
                }),
                ..operator_event(event::Type::TaskUpdated)
            })
        });
    }

    /// A registered framework as GET_FRAMEWORKS and the framework events show it: its offers
    /// and the resources they and its tasks hold.
    pub fn framework_view(
        &self,
        framework_id: &str,
    ) -> Option<response::get_frameworks::Framework> {
        let f = self.frameworks.get(framework_id)?;
        let offers: Vec<_> = self
            .allocator
            .offers()
            .filter(|o| o.framework.0 == framework_id)
            .filter_map(|o| self.offer_proto(o))
            .collect();
        let offered_resources = offers.iter().flat_map(|o| o.resources.clone()).collect();
        let allocated_resources = self
            .tasks
            .range((framework_id.to_owned(), String::new())..)
            .take_while(|(k, _)| k.0 == framework_id)
            .flat_map(|(_, r)| r.task.resources.clone())
            .collect();
        Some(response::get_frameworks::Framework {
            framework_info: f.info.clone(),
            active: f.active,
            connected: f.connection.is_some(),
            recovered: f.recovered,
            registered_time: Some(time_info(f.registered_time)),
            reregistered_time: f.reregistered_time.map(time_info),
            offer_constraints: f.offer_constraints.clone(),
            offers,
            offered_resources,
            allocated_resources,
            ..Default::default()
        })
    }

    /// A registered agent as GET_AGENTS and AGENT_ADDED show it: its total, allocated and
    /// offered resources.
    pub fn agent_view(&self, agent_id: &str) -> Option<response::get_agents::Agent> {
        let agent = self.agents.get(agent_id)?;
        let alloc_id = AllocAgentId(agent_id.to_owned());
        let total = self
            .allocator
            .agent_total(&alloc_id)
            .cloned()
            .unwrap_or_default();
        let available = self
            .allocator
            .agent_available(&alloc_id)
            .cloned()
            .unwrap_or_default();
        let mut offered = ResourceSet::new();
        for offer in self.allocator.offers().filter(|o| o.agent.0 == agent_id) {
            let _ = offered.add(&offer.resources);
        }
        let allocated = total
            .checked_sub(&available)
            .and_then(|s| s.checked_sub(&offered))
            .unwrap_or_default();
        let mut info = agent.info.clone();
        info.resources = convert::to_protos(&total);
        let providers = agent
            .resource_providers
            .iter()
            .map(|p| response::get_agents::agent::ResourceProvider {
                resource_provider_info: p.clone(),
                total_resources: info
                    .resources
                    .iter()
                    .filter(|r| r.provider_id.is_some() && r.provider_id == p.id)
                    .cloned()
                    .collect(),
            })
            .collect();
        Some(response::get_agents::Agent {
            agent_info: info.clone(),
            active: agent.connected(),
            deactivated: Some(false),
            version: agent.version.clone().unwrap_or_default(),
            pid: Some(agent.pid()),
            registered_time: Some(time_info(agent.registered_time)),
            reregistered_time: agent.reregistered_time.map(time_info),
            total_resources: info.resources,
            allocated_resources: convert::to_protos(&allocated),
            offered_resources: convert::to_protos(&offered),
            capabilities: agent.capabilities.clone(),
            resource_providers: providers,
            drain_info: None,
            estimated_drain_start_time: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::Config;

    fn heartbeat(_: &Master) -> Option<Event> {
        Some(operator_event(event::Type::Heartbeat))
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_and_others_keep_going() {
        let mut config = Config::new("h", Ipv4Addr::LOCALHOST, 5050);
        config.event_queue_max = 2;
        let mut m = Master::new(config);
        let mut slow = m.add_operator_subscriber(operator_event(event::Type::Subscribed));
        let mut fast = m.add_operator_subscriber(operator_event(event::Type::Subscribed));
        assert_eq!(m.operator_subscriber_count(), 2);
        m.publish(heartbeat);
        for _ in 0..2 {
            assert!(fast.try_recv().is_ok());
        }
        // `slow` holds two events: the next one does not fit.
        m.publish(heartbeat);
        assert_eq!(m.operator_subscriber_count(), 1);
        assert!(fast.try_recv().is_ok());
        // The dropped subscriber's stream ends after what was queued.
        let types: Vec<_> = std::iter::from_fn(|| slow.try_recv().ok())
            .map(|e| e.r#type())
            .collect();
        assert_eq!(types, [event::Type::Subscribed, event::Type::Heartbeat]);
        assert!(slow.is_closed());
    }

    #[test]
    fn gone_subscribers_are_forgotten_and_nothing_is_built_without_one() {
        let mut m = Master::new(Config::new("h", Ipv4Addr::LOCALHOST, 5050));
        m.publish(|_| unreachable!("no subscriber, no event"));
        drop(m.add_operator_subscriber(operator_event(event::Type::Subscribed)));
        m.publish(heartbeat);
        assert!(m.operator_subscribers.is_empty());
    }
}
