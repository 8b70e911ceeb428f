//! The events the agent sends executors (pure constructors of `mesos.v1.executor.Event`).

use mesoblk_proto::mesos::v1::executor::{event, Event};
use mesoblk_proto::mesos::v1::{
    AgentInfo, ContainerId, ExecutorInfo, FrameworkInfo, KillPolicy, TaskGroupInfo, TaskId,
    TaskInfo,
};

fn typed(kind: event::Type) -> Event {
    Event {
        r#type: Some(kind as i32),
        ..Event::default()
    }
}

/// SUBSCRIBED: who the executor is, for which framework, on which agent, in which container.
pub(super) fn subscribed(
    executor: &ExecutorInfo,
    framework: &FrameworkInfo,
    agent: &AgentInfo,
    container_id: &str,
) -> Event {
    Event {
        subscribed: Some(event::Subscribed {
            executor_info: executor.clone(),
            framework_info: framework.clone(),
            agent_info: agent.clone(),
            container_id: Some(ContainerId {
                value: container_id.to_string(),
                parent: None,
            }),
        }),
        ..typed(event::Type::Subscribed)
    }
}

/// LAUNCH of one task.
pub(super) fn launch(task: &TaskInfo) -> Event {
    Event {
        launch: Some(event::Launch { task: task.clone() }),
        ..typed(event::Type::Launch)
    }
}

/// LAUNCH_GROUP of one task group.
pub(super) fn launch_group(group: &TaskGroupInfo) -> Event {
    Event {
        launch_group: Some(event::LaunchGroup {
            task_group: group.clone(),
        }),
        ..typed(event::Type::LaunchGroup)
    }
}

/// KILL of one task.
pub(super) fn kill(task_id: &str, kill_policy: Option<KillPolicy>) -> Event {
    Event {
        kill: Some(event::Kill {
            task_id: TaskId {
                value: task_id.to_string(),
            },
            kill_policy,
        }),
        ..typed(event::Type::Kill)
    }
}

/// ACKNOWLEDGED of one status update.
pub(super) fn acknowledged(task_id: &str, uuid: &[u8; 16]) -> Event {
    Event {
        acknowledged: Some(event::Acknowledged {
            task_id: TaskId {
                value: task_id.to_string(),
            },
            uuid: uuid.to_vec(),
        }),
        ..typed(event::Type::Acknowledged)
    }
}

/// MESSAGE from the scheduler.
pub(super) fn message(data: &[u8]) -> Event {
    Event {
        message: Some(event::Message {
            data: data.to_vec(),
        }),
        ..typed(event::Type::Message)
    }
}

/// SHUTDOWN.
pub(super) fn shutdown() -> Event {
    typed(event::Type::Shutdown)
}

/// HEARTBEAT.
pub(super) fn heartbeat() -> Event {
    typed(event::Type::Heartbeat)
}
