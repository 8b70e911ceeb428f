//! LAUNCH and LAUNCH_GROUP inside an ACCEPT: each task (or the whole group) is validated against
//! what is left of the offer; a valid launch books its executor (when new) and its tasks in
//! TASK_STAGING, consumes their resources from the plan, and goes to the agent as RUN_TASK or
//! RUN_TASK_GROUP; an invalid one ends in TASK_ERROR (REASON_TASK_INVALID or
//! REASON_TASK_GROUP_INVALID) with Mesos's message.

use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::{
    task_status, ExecutorInfo, FrameworkId, Task, TaskGroupInfo, TaskInfo, TaskState,
};
use tracing::{debug, info};

use super::accept::Plan;
use super::agents::ExecutorRecord;
use super::task_validation::{Consumption, LaunchSite};
use super::{convert, Master};
use crate::allocator::ResourceSet;
use crate::PROVISIONING;

impl Master {
    /// Books a launch: the executor (if new) and the tasks, consumed from the plan.
    fn book_launch(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        executor: Option<&ExecutorInfo>,
        consumption: &Consumption,
        plan: &mut Plan,
    ) {
        let total = consumption.total();
        if let Err(e) = plan.remaining.subtract(&total) {
            debug!("validated launch not in the remaining resources: {e}");
        }
        let _ = plan.used.add(&total);
        if let (Some(executor), Some(set)) = (executor, &consumption.executor) {
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent
                    .executors
                    .entry(framework_id.to_owned())
                    .or_default()
                    .insert(
                        executor.executor_id.value.clone(),
                        ExecutorRecord {
                            info: executor.clone(),
                            role: role.to_owned(),
                            allocation: set.clone(),
                            live_tasks: 0,
                        },
                    );
            }
        }
    }

    fn book_task(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        task: &TaskInfo,
        allocation: ResourceSet,
    ) {
        let framework_user = self
            .frameworks
            .get(framework_id)
            .map(|f| f.info.user.clone());
        if let Some(executor) = &task.executor {
            if let Some(record) = self
                .agents
                .get_mut(agent_id)
                .and_then(|a| a.executors.get_mut(framework_id))
                .and_then(|e| e.get_mut(&executor.executor_id.value))
            {
                record.live_tasks += 1;
            }
        }
        let record = Task {
            name: task.name.clone(),
            task_id: task.task_id.clone(),
            framework_id: FrameworkId {
                value: framework_id.into(),
            },
            executor_id: task.executor.as_ref().map(|e| e.executor_id.clone()),
            agent_id: task.agent_id.clone(),
            state: TaskState::TaskStaging as i32,
            resources: task.resources.clone(),
            statuses: Vec::new(),
            status_update_state: None,
            status_update_uuid: None,
            labels: task.labels.clone(),
            discovery: task.discovery.clone(),
            kill_policy: task.kill_policy,
            user: task
                .command
                .as_ref()
                .and_then(|c| c.user.clone())
                .or(framework_user),
            limits: task.limits.clone(),
        };
        self.add_task(record, role.to_owned(), allocation);
    }

    pub(super) fn launch_task(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        mut task: TaskInfo,
        plan: &mut Plan,
    ) {
        if let Some(executor) = task.executor.as_mut() {
            if executor.framework_id.is_none() {
                executor.framework_id = Some(FrameworkId {
                    value: framework_id.into(),
                });
            }
        }
        let site = LaunchSite {
            framework_id,
            agent_id,
            role,
        };
        let consumption = match self.validate_task(&task, site, &plan.remaining) {
            Ok(c) => c,
            Err(message) => {
                return self.task_error(
                    framework_id,
                    &task,
                    task_status::Reason::TaskInvalid,
                    &message,
                )
            }
        };
        self.book_launch(
            framework_id,
            agent_id,
            role,
            task.executor.as_ref(),
            &consumption,
            plan,
        );
        self.book_task(
            framework_id,
            agent_id,
            role,
            &task,
            consumption.tasks.clone(),
        );
        let Some(framework) = self.frameworks.get(framework_id).map(|f| f.info.clone()) else {
            return;
        };
        info!(task = %task.task_id.value, framework = %framework_id, agent = %agent_id, "launching task");
        let launch_executor = task.executor.is_none() || consumption.executor.is_some();
        let task_id = task.task_id.value.clone();
        let event = agent::Event {
            r#type: Some(agent::event::Type::RunTask as i32),
            run_task: Some(agent::event::RunTask {
                framework,
                task,
                launch_executor: Some(launch_executor),
            }),
            ..Default::default()
        };
        self.send_to_agent(agent_id, event);
        debug!(target: PROVISIONING, task = %task_id, "RUN_TASK queued to the agent");
    }

    pub(super) fn launch_group(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        executor: ExecutorInfo,
        mut group: TaskGroupInfo,
        plan: &mut Plan,
    ) {
        for task in &mut group.tasks {
            if task.executor.is_none() {
                task.executor = Some(executor.clone());
            }
        }
        let site = LaunchSite {
            framework_id,
            agent_id,
            role,
        };
        let consumption = match self.validate_task_group(&group, &executor, site, &plan.remaining) {
            Ok(c) => c,
            Err(message) => {
                for task in &group.tasks {
                    self.task_error(
                        framework_id,
                        task,
                        task_status::Reason::TaskGroupInvalid,
                        &message,
                    );
                }
                return;
            }
        };
        self.book_launch(
            framework_id,
            agent_id,
            role,
            Some(&executor),
            &consumption,
            plan,
        );
        for task in &group.tasks {
            let allocation = convert::to_set(&task.resources).unwrap_or_default();
            self.book_task(framework_id, agent_id, role, task, allocation);
        }
        let Some(framework) = self.frameworks.get(framework_id).map(|f| f.info.clone()) else {
            return;
        };
        info!(tasks = group.tasks.len(), framework = %framework_id, agent = %agent_id, "launching task group");
        let event = agent::Event {
            r#type: Some(agent::event::Type::RunTaskGroup as i32),
            run_task_group: Some(agent::event::RunTaskGroup {
                framework,
                executor,
                task_group: group,
                launch_executor: Some(consumption.executor.is_some()),
            }),
            ..Default::default()
        };
        self.send_to_agent(agent_id, event);
    }
}
