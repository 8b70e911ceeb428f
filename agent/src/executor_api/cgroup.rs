//! Custom executors' cgroups: the limits of an executor's group (its own resources plus its
//! live tasks'), made when it starts and rewritten when a launch adds tasks.

use std::path::Path;

use mesoblk_proto::mesos::v1::{value, Resource};

use crate::executor::{Cgroups, Limits};

/// The sum of the scalar resource `name` in `resources`; `None` when there is none.
fn scalar<'a>(resources: impl Iterator<Item = &'a Resource>, name: &str) -> Option<f64> {
    resources
        .filter(|r| r.name == name && r.r#type() == value::Type::Scalar)
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .fold(None, |sum, x| Some(sum.unwrap_or(0.0) + x))
}

/// The limits of an executor holding `resources` (its own and its live tasks').
pub(super) fn limits<'a>(resources: impl Iterator<Item = &'a Resource> + Clone) -> Limits {
    Limits {
        cpus: scalar(resources.clone(), "cpus"),
        mem_mb: scalar(resources, "mem"),
        // Block devices are limited by their servers' profiles, as for command tasks.
        io: None,
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
        let limits = limits(resources.iter());
        assert!((limits.cpus.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(limits.mem_mb, Some(128.0));
        assert!(limits.io.is_none());
        let none = super::limits([scalar_resource("disk", 1.0)].iter());
        assert_eq!((none.cpus, none.mem_mb), (None, None));
    }
}
