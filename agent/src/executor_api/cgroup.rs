//! Custom executors' cgroups: the limits of an executor's group (its own resources plus its
//! live tasks', and an `io.max` line per device of a live task), made when it starts,
//! rewritten when a launch adds tasks and when one of its tasks ends (the group shrinks to
//! the tasks left, and the ended task's devices lose their lines).

use std::path::Path;

use mesoblk_proto::mesos::v1::{value, Resource};

use crate::executor::{Cgroups, IoLimits, Limits};

/// The sum of the scalar resource `name` in `resources`; `None` when there is none.
fn scalar<'a>(resources: impl Iterator<Item = &'a Resource>, name: &str) -> Option<f64> {
    resources
        .filter(|r| r.name == name && r.r#type() == value::Type::Scalar)
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .fold(None, |sum, x| Some(sum.unwrap_or(0.0) + x))
}

/// The limits of an executor holding `resources` (its own and its live tasks') and its live
/// tasks' devices `io` (a device listed twice keeps its first limits).
pub(super) fn limits<'a>(
    resources: impl Iterator<Item = &'a Resource> + Clone,
    io: impl Iterator<Item = &'a IoLimits>,
) -> Limits {
    let mut devices = Vec::<IoLimits>::new();
    for limits in io {
        if !devices.iter().any(|d| d.device() == limits.device()) {
            devices.push(*limits);
        }
    }
    Limits {
        cpus: scalar(resources.clone(), "cpus"),
        mem_mb: scalar(resources, "mem"),
        io: devices,
    }
}

/// Adds to `limits` the removal of the `io.max` line of each `released` device no live task
/// still holds.
pub(super) fn release(limits: &mut Limits, released: &[IoLimits]) {
    for gone in released {
        if !limits.io.iter().any(|d| d.device() == gone.device()) {
            limits.io.push(gone.unlimited());
        }
    }
}

/// Rewrites the limits of `path`; a failure is logged (the executor keeps running with the
/// limits it had, as it would after a failed Mesos container update).
pub(super) fn update(cgroups: &Cgroups, path: &Path, limits: &Limits) {
    if let Err(e) = cgroups.update(path, limits) {
        tracing::warn!(cgroup = %path.display(), error = %e, "cannot update the executor's limits");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesoblk_proto::mesos::v1::value::Scalar;

    fn scalar_resource(name: &str, x: f64) -> Resource {
        Resource {
            name: name.into(),
            r#type: value::Type::Scalar as i32,
            scalar: Some(Scalar { value: x }),
            ..Default::default()
        }
    }

    #[test]
    fn limits_add_the_executor_and_its_tasks() {
        let resources = [
            scalar_resource("cpus", 0.1),
            scalar_resource("mem", 32.0),
            scalar_resource("cpus", 0.5),
            scalar_resource("mem", 96.0),
            scalar_resource("disk", 10.0),
        ];
        let limits = limits(resources.iter(), [].iter());
        assert!((limits.cpus.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(limits.mem_mb, Some(128.0));
        assert!(limits.io.is_empty());
        let none = super::limits([scalar_resource("disk", 1.0)].iter(), [].iter());
        assert_eq!((none.cpus, none.mem_mb), (None, None));
    }
}
