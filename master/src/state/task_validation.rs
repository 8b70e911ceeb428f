//! Mesos's checks on launched tasks, task groups, executors and operation resources
//! (`validation::task`, `validation::task::group`, `validation::executor`,
//! `validation::resource` in Mesos's `src/master/validation.cpp`), in Mesos's order and with its
//! messages. A failed check becomes TASK_ERROR (REASON_TASK_INVALID or
//! REASON_TASK_GROUP_INVALID) or OPERATION_ERROR; a passed one says what the launch consumes.

use std::collections::BTreeSet;

use mesoblk_proto::mesos::v1::agent_info::capability::Type as AgentCapability;
use mesoblk_proto::mesos::v1::{executor_info, ExecutorInfo, Resource, TaskGroupInfo, TaskInfo};

use super::validation::validate_id;
use super::{convert, Master};
use crate::allocator::ResourceSet;

/// Mesos's `MIN_CPUS` for executors.
const MIN_CPUS: f64 = 0.01;
/// Mesos's `MIN_MEM` for executors, in MB.
const MIN_MEM_MB: f64 = 32.0;

/// What a valid launch consumes from the offer.
#[derive(Debug, Default)]
pub struct Consumption {
    /// The tasks' resources.
    pub tasks: ResourceSet,
    /// The executor's resources when the launch starts a new executor.
    pub executor: Option<ResourceSet>,
}

impl Consumption {
    /// Everything consumed.
    pub fn total(&self) -> ResourceSet {
        let mut total = self.tasks.clone();
        if let Some(executor) = &self.executor {
            // Both sets were carved out of one offer, so the sum is bounded.
            let _ = total.add(executor);
        }
        total
    }
}

/// Mesos's `resource::validate` for resources a framework sends (after the master upgraded them
/// and injected the allocation role).
pub fn validate_resources(resources: &[Resource]) -> Result<(), String> {
    for resource in resources {
        let mut upgraded = resource.clone();
        convert::upgrade(&mut upgraded);
        convert::validate(&upgraded).map_err(|e| format!("Invalid resources: {e}"))?;
        if let Some(disk) = &upgraded.disk {
            validate_disk(&upgraded, disk).map_err(|e| format!("Invalid DiskInfo: {e}"))?;
        }
    }
    Ok(())
}

fn validate_disk(
    resource: &Resource,
    disk: &mesoblk_proto::mesos::v1::resource::DiskInfo,
) -> Result<(), String> {
    if let Some(persistence) = &disk.persistence {
        if resource.revocable.is_some() {
            return Err("Persistent volumes cannot be created from revocable resources".into());
        }
        if resource.reservations.is_empty() {
            return Err("Persistent volumes cannot be created from unreserved resources".into());
        }
        let Some(volume) = &disk.volume else {
            return Err("Expecting 'volume' to be set for persistent volume".into());
        };
        if volume.host_path.is_some() {
            return Err("Expecting 'host_path' to be unset for persistent volume".into());
        }
        validate_id(&persistence.id)
            .map_err(|e| format!("Invalid persistence ID for persistent volume: {e}"))?;
    } else if disk.volume.is_some() {
        return Err("Non-persistent volume not supported".into());
    } else if disk.source.is_none() {
        return Err("DiskInfo is set but empty".into());
    }
    Ok(())
}

/// Persistence ids must be unique per role.
pub fn validate_unique_persistence_ids(resources: &[Resource]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for resource in resources {
        if let Some(p) = resource.disk.as_ref().and_then(|d| d.persistence.as_ref()) {
            if !seen.insert((convert::reservation_role(resource).to_owned(), p.id.clone())) {
                return Err(format!("Persistence ID '{}' is not unique", p.id));
            }
        }
    }
    Ok(())
}

/// All resources allocated to one role (`validateAllocatedToSingleRole`).
pub fn validate_single_role(resources: &[Resource]) -> Result<(), String> {
    let mut role: Option<&str> = None;
    for resource in resources {
        let Some(r) = convert::allocation_role(resource) else {
            return Err("The resources are not allocated to a role".into());
        };
        match role {
            None => role = Some(r),
            Some(first) if first != r => {
                return Err(format!(
                    "The resources have multiple allocation roles ('{r}' and '{first}') but only \
                     one allocation role is allowed"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `resources` as a set, if every one is allocated to `role` (else they are not in the offer).
fn in_role(resources: &[Resource], role: &str) -> Option<ResourceSet> {
    if resources
        .iter()
        .any(|r| convert::allocation_role(r).is_some_and(|a| a != role))
    {
        return None;
    }
    convert::to_set(resources).ok()
}

fn scalar_sum(resources: &[Resource], name: &str) -> Option<f64> {
    let values: Vec<f64> = resources
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn negative_duration(d: Option<&mesoblk_proto::mesos::v1::DurationInfo>) -> bool {
    d.is_some_and(|d| d.nanoseconds < 0)
}

/// Where a launch happens.
#[derive(Clone, Copy)]
pub struct LaunchSite<'a> {
    /// The framework.
    pub framework_id: &'a str,
    /// The agent of the offer.
    pub agent_id: &'a str,
    /// The offer's allocation role.
    pub role: &'a str,
}

impl Master {
    /// The executor with this id the framework already runs on the agent.
    fn existing_executor(&self, site: LaunchSite<'_>, executor_id: &str) -> Option<&ExecutorInfo> {
        self.agents
            .get(site.agent_id)?
            .executors
            .get(site.framework_id)?
            .get(executor_id)
            .map(|e| &e.info)
    }

    /// `validation::task::internal::validateTask` (everything but the executor).
    fn validate_task_fields(&self, task: &TaskInfo, site: LaunchSite<'_>) -> Result<(), String> {
        validate_id(&task.task_id.value)?;
        let key = (site.framework_id.to_owned(), task.task_id.value.clone());
        if self.tasks.contains_key(&key) {
            return Err(format!("Task has duplicate ID: {}", task.task_id.value));
        }
        if task.agent_id.value != site.agent_id {
            return Err(format!(
                "Task uses invalid agent {} while agent {} is expected",
                task.agent_id.value, site.agent_id
            ));
        }
        if negative_duration(
            task.kill_policy
                .as_ref()
                .and_then(|k| k.grace_period.as_ref()),
        ) {
            return Err("Task's 'kill_policy.grace_period' must be non-negative".into());
        }
        if negative_duration(task.max_completion_time.as_ref()) {
            return Err("Task's `max_completion_time` must be non-negative".into());
        }
        if task.resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        validate_resources(&task.resources)
            .map_err(|e| format!("Task uses invalid resources: {e}"))?;
        validate_unique_persistence_ids(&task.resources)
            .map_err(|e| format!("Task uses duplicate persistence ID: {e}"))?;
        validate_single_role(&task.resources)
            .map_err(|e| format!("Invalid task resources: {e}"))?;
        self.validate_limits(task, site)
    }

    fn validate_limits(&self, task: &TaskInfo, site: LaunchSite<'_>) -> Result<(), String> {
        if task.limits.is_empty() {
            return Ok(());
        }
        let capable = self
            .agents
            .get(site.agent_id)
            .is_some_and(|a| a.has_capability(AgentCapability::TaskResourceLimits));
        if !capable {
            return Err("Agent is not capable of handling task resource limits".into());
        }
        if task.limits.keys().any(|k| k != "cpus" && k != "mem") {
            return Err("Only cpus and mem may be included in a task's resource limits".into());
        }
        for (name, what, noun) in [("cpus", "cpu", "CPU"), ("mem", "memory", "memory")] {
            let Some(limit) = task.limits.get(name) else {
                continue;
            };
            let Some(request) = scalar_sum(&task.resources, name) else {
                return Err(format!(
                    "When a {noun} limit is specified, a {noun} request must also be specified"
                ));
            };
            if limit.value.is_finite() && limit.value < request {
                return Err(format!(
                    "The {what} limit must be greater than or equal to the {what} request"
                ));
            }
        }
        Ok(())
    }

    /// `validation::executor::internal::validate` (the checks common to both launch kinds).
    fn validate_executor_common(
        &self,
        executor: &ExecutorInfo,
        site: LaunchSite<'_>,
    ) -> Result<(), String> {
        match executor
            .r#type
            .and_then(|t| executor_info::Type::try_from(t).ok())
        {
            Some(executor_info::Type::Default) if executor.command.is_some() => {
                return Err("'ExecutorInfo.command' must not be set for 'DEFAULT' executor".into())
            }
            Some(executor_info::Type::Custom) if executor.command.is_none() => {
                return Err("'ExecutorInfo.command' must be set for 'CUSTOM' executor".into())
            }
            _ => {}
        }
        validate_id(&executor.executor_id.value)?;
        if negative_duration(executor.shutdown_grace_period.as_ref()) {
            return Err("ExecutorInfo's 'shutdown_grace_period' must be non-negative".into());
        }
        let Some(framework_id) = &executor.framework_id else {
            return Err("'ExecutorInfo.framework_id' must be set".into());
        };
        if framework_id.value != site.framework_id {
            return Err(format!(
                "ExecutorInfo has an invalid FrameworkID (Actual: {} vs Expected: {})",
                framework_id.value, site.framework_id
            ));
        }
        validate_resources(&executor.resources)
            .map_err(|e| format!("Executor uses invalid resources: {e}"))?;
        validate_unique_persistence_ids(&executor.resources)
            .map_err(|e| format!("Executor uses duplicate persistence ID: {e}"))?;
        validate_single_role(&executor.resources)
            .map_err(|e| format!("Invalid executor resources: {e}"))?;
        if let Some(existing) = self.existing_executor(site, &executor.executor_id.value) {
            if existing != executor {
                return Err(format!(
                    "ExecutorInfo is not compatible with existing ExecutorInfo with same \
                     ExecutorID.\n{}\nExisting ExecutorInfo:\n{existing:?}\n{}\nExecutorInfo:\n\
                     {executor:?}\n{}\n",
                    "-".repeat(60),
                    "-".repeat(60),
                    "-".repeat(60)
                ));
            }
        }
        Ok(())
    }

    fn not_available(
        &self,
        what: &str,
        total: &[Resource],
        available: &ResourceSet,
        role: &str,
    ) -> String {
        let mut offered = convert::to_protos(available);
        convert::allocate(&mut offered, role);
        format!(
            "Total resources {} required by {what} more than available {}",
            convert::stringify(total),
            convert::stringify(&offered)
        )
    }

    /// `validation::task::validate` for a LAUNCH task against what is left of the offer.
    pub fn validate_task(
        &self,
        task: &TaskInfo,
        site: LaunchSite<'_>,
        available: &ResourceSet,
    ) -> Result<Consumption, String> {
        self.validate_task_fields(task, site)?;
        if task.executor.is_some() == task.command.is_some() {
            return Err(
                "Task should have at least one (but not both) of CommandInfo or \
                        ExecutorInfo present"
                    .into(),
            );
        }
        let mut total = task.resources.clone();
        let mut new_executor = false;
        if let Some(executor) = &task.executor {
            self.validate_executor_common(executor, site)?;
            if executor
                .r#type
                .is_some_and(|t| t != executor_info::Type::Custom as i32)
            {
                return Err("'ExecutorInfo.type' must be 'CUSTOM'".into());
            }
            if executor.command.is_none() {
                return Err("'ExecutorInfo.command' must be set".into());
            }
            if self
                .existing_executor(site, &executor.executor_id.value)
                .is_none()
            {
                new_executor = true;
                total.extend(executor.resources.iter().cloned());
            }
        }
        validate_unique_persistence_ids(&total)
            .map_err(|e| format!("Task and its executor use duplicate persistence ID: {e}"))?;
        let (Some(tasks), executor) = (
            in_role(&task.resources, site.role),
            task.executor
                .as_ref()
                .filter(|_| new_executor)
                .map(|e| in_role(&e.resources, site.role)),
        ) else {
            return Err(self.not_available(
                "task and its executor is",
                &total,
                available,
                site.role,
            ));
        };
        let executor = match executor {
            Some(None) => {
                return Err(self.not_available(
                    "task and its executor is",
                    &total,
                    available,
                    site.role,
                ))
            }
            Some(Some(set)) => Some(set),
            None => None,
        };
        let consumption = Consumption { tasks, executor };
        if !available.contains(&consumption.total()) {
            return Err(self.not_available(
                "task and its executor is",
                &total,
                available,
                site.role,
            ));
        }
        Ok(consumption)
    }

    /// `validation::task::group::validate` for a LAUNCH_GROUP (tasks already carry the executor).
    pub fn validate_task_group(
        &self,
        group: &TaskGroupInfo,
        executor: &ExecutorInfo,
        site: LaunchSite<'_>,
        available: &ResourceSet,
    ) -> Result<Consumption, String> {
        let mut ids = BTreeSet::new();
        for task in &group.tasks {
            let invalid = |e: String| format!("Task '{}' is invalid: {e}", task.task_id.value);
            self.validate_task_fields(task, site).map_err(invalid)?;
            if !ids.insert(&task.task_id.value) {
                return Err(invalid(format!(
                    "Task has duplicate ID: {}",
                    task.task_id.value
                )));
            }
            if task.executor.is_none() {
                return Err(invalid("'TaskInfo.executor' must be set".into()));
            }
        }
        self.validate_executor_common(executor, site)?;
        let executor_id = &executor.executor_id.value;
        match executor
            .r#type
            .and_then(|t| executor_info::Type::try_from(t).ok())
        {
            None => return Err("'ExecutorInfo.type' must be set".into()),
            Some(executor_info::Type::Unknown) => return Err("Unknown executor type".into()),
            Some(_) => {}
        }
        if let Some(task) = group
            .tasks
            .iter()
            .find(|t| t.executor.as_ref() != Some(executor))
        {
            return Err(format!(
                "The `ExecutorInfo` of task '{}' is different from executor '{executor_id}'",
                task.task_id.value
            ));
        }
        let cpus = scalar_sum(&executor.resources, "cpus");
        if cpus.is_none_or(|c| c < MIN_CPUS) {
            let shown = cpus.map_or_else(|| "None".to_owned(), |c| c.to_string());
            return Err(format!(
                "Executor '{executor_id}' uses less CPUs ({shown}) than the minimum required ({MIN_CPUS})"
            ));
        }
        let mem = scalar_sum(&executor.resources, "mem");
        if mem.is_none_or(|m| m < MIN_MEM_MB) {
            let shown = mem.map_or_else(|| "None".to_owned(), |m| format!("{m}MB"));
            return Err(format!(
                "Executor '{executor_id}' uses less memory ({shown}) than the minimum required (32MB)"
            ));
        }
        if scalar_sum(&executor.resources, "disk").is_none() {
            return Err(format!("Executor '{executor_id}' uses no disk"));
        }
        let mut task_resources: Vec<Resource> = group
            .tasks
            .iter()
            .flat_map(|t| t.resources.iter().cloned())
            .collect();
        let mut total = task_resources.clone();
        total.extend(executor.resources.iter().cloned());
        validate_unique_persistence_ids(&total)
            .map_err(|e| format!("Task group and executor use duplicate persistence ID: {e}"))?;
        let new_executor = self.existing_executor(site, executor_id).is_none();
        if new_executor {
            task_resources.extend(executor.resources.iter().cloned());
        }
        let shown = task_resources;
        let tasks: Option<ResourceSet> =
            group
                .tasks
                .iter()
                .try_fold(ResourceSet::new(), |mut acc, t| {
                    let set = in_role(&t.resources, site.role)?;
                    acc.add(&set).ok()?;
                    Some(acc)
                });
        let executor_set = if new_executor {
            in_role(&executor.resources, site.role).map(Some)
        } else {
            Some(None)
        };
        let (Some(tasks), Some(executor)) = (tasks, executor_set) else {
            return Err(self.not_available(
                "task group and its executor are",
                &shown,
                available,
                site.role,
            ));
        };
        let consumption = Consumption { tasks, executor };
        if !available.contains(&consumption.total()) {
            return Err(self.not_available(
                "task group and its executor are",
                &shown,
                available,
                site.role,
            ));
        }
        Ok(consumption)
    }
}
