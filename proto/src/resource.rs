//! Building Mesos `Resource` values, so every crate (and test) makes them the same way.

use crate::mesos::v1::{value, Resource};

/// An unreserved scalar resource (`cpus`, `mem` in MB, `disk` in MB, `gpus`).
pub fn scalar(name: &str, value: f64) -> Resource {
    Resource {
        name: name.to_owned(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value }),
        ..Resource::default()
    }
}
