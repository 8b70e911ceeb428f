//! Builders for the operations of an ACCEPT call (`Offer.Operation`) and for the pieces they
//! are made of: plain Mesos, nothing mesoblk-specific (see [`crate::block`] for block disks).
//!
//! ```
//! use mesoblk_framework::operations::{self, scalar};
//! use mesoblk_framework::proto::mesos::v1::{AgentId, CommandInfo, TaskId, TaskInfo};
//!
//! let task = TaskInfo {
//!     name: "hello".into(),
//!     task_id: TaskId { value: "hello-1".into() },
//!     agent_id: AgentId { value: "S1".into() },
//!     resources: vec![scalar("cpus", 0.1), scalar("mem", 32.0)],
//!     command: Some(CommandInfo { value: Some("echo hello".into()), ..CommandInfo::default() }),
//!     ..TaskInfo::default()
//! };
//! let launch = operations::with_id(operations::launch(vec![task]), "op-1");
//! assert_eq!(launch.id.unwrap().value, "op-1");
//! ```

use mesoblk_proto::mesos::v1::offer::operation::{self, Type};
use mesoblk_proto::mesos::v1::offer::Operation;
use mesoblk_proto::mesos::v1::resource::disk_info::source;
use mesoblk_proto::mesos::v1::{
    ExecutorInfo, Filters, OperationId, Resource, TaskGroupInfo, TaskInfo,
};
pub use mesoblk_proto::resource::scalar;

fn operation(kind: Type) -> Operation {
    Operation {
        r#type: Some(kind as i32),
        ..Operation::default()
    }
}

/// LAUNCH `tasks`.
pub fn launch(tasks: Vec<TaskInfo>) -> Operation {
    Operation {
        launch: Some(operation::Launch { task_infos: tasks }),
        ..operation(Type::Launch)
    }
}

/// LAUNCH_GROUP: `group` runs atomically under `executor`.
pub fn launch_group(executor: ExecutorInfo, group: TaskGroupInfo) -> Operation {
    Operation {
        launch_group: Some(operation::LaunchGroup {
            executor,
            task_group: group,
        }),
        ..operation(Type::LaunchGroup)
    }
}

/// RESERVE `resources` (each carrying the reservation to add).
pub fn reserve(resources: Vec<Resource>) -> Operation {
    Operation {
        reserve: Some(operation::Reserve {
            source: Vec::new(),
            resources,
        }),
        ..operation(Type::Reserve)
    }
}

/// UNRESERVE `resources` (as offered, with their reservations).
pub fn unreserve(resources: Vec<Resource>) -> Operation {
    Operation {
        unreserve: Some(operation::Unreserve { resources }),
        ..operation(Type::Unreserve)
    }
}

/// CREATE persistent `volumes` (disk resources with `disk.persistence` and `disk.volume`).
pub fn create(volumes: Vec<Resource>) -> Operation {
    Operation {
        create: Some(operation::Create { volumes }),
        ..operation(Type::Create)
    }
}

/// DESTROY persistent `volumes`.
pub fn destroy(volumes: Vec<Resource>) -> Operation {
    Operation {
        destroy: Some(operation::Destroy { volumes }),
        ..operation(Type::Destroy)
    }
}

/// CREATE_DISK: turns `source` (a RAW disk from a resource provider) into a disk of
/// `target_type` (MOUNT or BLOCK), optionally of another profile. Give the operation an id
/// ([`with_id`]) to get its status updates.
pub fn create_disk(
    source: Resource,
    target_type: source::Type,
    target_profile: Option<String>,
) -> Operation {
    Operation {
        create_disk: Some(operation::CreateDisk {
            source,
            target_type: target_type as i32,
            target_profile,
        }),
        ..operation(Type::CreateDisk)
    }
}

/// DESTROY_DISK: gives a MOUNT or BLOCK disk made by CREATE_DISK back (as RAW).
pub fn destroy_disk(source: Resource) -> Operation {
    Operation {
        destroy_disk: Some(operation::DestroyDisk { source }),
        ..operation(Type::DestroyDisk)
    }
}

/// `operation` with `id` set, so the master reports its progress as operation statuses.
pub fn with_id(operation: Operation, id: impl Into<String>) -> Operation {
    Operation {
        id: Some(OperationId { value: id.into() }),
        ..operation
    }
}

/// Filters that refuse the declined resources for `seconds`.
pub fn refuse_seconds(seconds: f64) -> Filters {
    Filters {
        refuse_seconds: Some(seconds),
    }
}

/// The total of the scalar resources named `name` in `resources`.
pub fn scalar_sum(resources: &[Resource], name: &str) -> f64 {
    resources
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| r.scalar.as_ref())
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::resource::DiskInfo;

    use super::*;

    #[test]
    fn operations_carry_their_type_and_body() {
        let op = launch(Vec::new());
        assert_eq!(op.r#type(), Type::Launch);
        assert!(op.launch.is_some());
        let op = create_disk(scalar("disk", 10.0), source::Type::Block, None);
        assert_eq!(op.r#type(), Type::CreateDisk);
        let body = op.create_disk.expect("body");
        assert_eq!(body.target_type(), source::Type::Block);
        let op = destroy_disk(Resource {
            disk: Some(DiskInfo::default()),
            ..scalar("disk", 1.0)
        });
        assert_eq!(op.r#type(), Type::DestroyDisk);
        assert_eq!(reserve(Vec::new()).r#type(), Type::Reserve);
        assert_eq!(unreserve(Vec::new()).r#type(), Type::Unreserve);
        assert_eq!(create(Vec::new()).r#type(), Type::Create);
        assert_eq!(destroy(Vec::new()).r#type(), Type::Destroy);
        let group = launch_group(ExecutorInfo::default(), TaskGroupInfo::default());
        assert_eq!(group.r#type(), Type::LaunchGroup);
        assert_eq!(with_id(group, "x").id.map(|i| i.value), Some("x".into()));
    }

    #[test]
    fn scalars_add_up_by_name() {
        let resources = [
            scalar("cpus", 1.5),
            scalar("mem", 64.0),
            scalar("cpus", 0.5),
        ];
        assert_eq!(scalar_sum(&resources, "cpus"), 2.0);
        assert_eq!(scalar_sum(&resources, "gpus"), 0.0);
        assert_eq!(refuse_seconds(3.0).refuse_seconds, Some(3.0));
    }
}
