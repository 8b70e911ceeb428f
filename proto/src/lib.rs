//! Protobuf wire definitions for mesoblk, and the codecs Mesos clients expect.
//!
//! - [`mesos::v1`] (with `scheduler`, `master` and `quota`) mirrors Apache Mesos's v1 packages:
//!   package, message, field and enum names, numbers, labels and defaults are Mesos's own, so
//!   protobuf bodies produced here are byte-compatible with Mesos clients. The code is generated
//!   by prost from `proto/**/*.proto` at build time; every message implements
//!   [`prost_reflect::ReflectMessage`], backed by [`DESCRIPTOR_POOL`].
//! - [`json`] is Mesos's JSON mapping (stout's): proto field names, enum names, base64 `bytes`,
//!   64-bit integers as numbers, explicit defaults written out, unknown fields ignored.
//! - [`codec`] picks JSON or protobuf from `Content-Type`/`Accept` exactly as Mesos does.
//! - [`recordio`] frames streamed events (`<decimal length>\n<bytes>`).

#![forbid(unsafe_code)]

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

pub mod codec;
pub mod json;
pub mod recordio;

/// Descriptors of every message compiled into this crate.
///
/// # Panics
/// The first use panics if the descriptor set that the build script wrote is not decodable,
/// which would be a build bug (the same bytes were produced by protoc moments before).
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin")).as_ref(),
    )
    .expect("the build script's descriptor set decodes")
});

/// Messages of Apache Mesos's `mesos.v1` packages.
pub mod mesos {
    /// The `mesos.v1` package.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.rs"));

        /// The `mesos.v1.scheduler` package: the scheduler HTTP API's calls and events.
        #[allow(missing_docs, unreachable_pub, clippy::all)]
        pub mod scheduler {
            include!(concat!(env!("OUT_DIR"), "/mesos.v1.scheduler.rs"));
        }

        /// The `mesos.v1.master` package: the operator HTTP API's calls, responses and events.
        #[allow(missing_docs, unreachable_pub, clippy::all)]
        pub mod master {
            include!(concat!(env!("OUT_DIR"), "/mesos.v1.master.rs"));
        }

        /// The `mesos.v1.quota` package.
        #[allow(missing_docs, unreachable_pub, clippy::all)]
        pub mod quota {
            include!(concat!(env!("OUT_DIR"), "/mesos.v1.quota.rs"));
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::ReflectMessage;

    use super::mesos::v1::{scheduler, value, AgentId, Value};

    #[test]
    fn agent_id_encodes_as_field_one_string() {
        let id = AgentId { value: "S1".into() };
        // Field 1, wire type 2 (length-delimited), length 2, "S1": what Mesos puts on the wire.
        assert_eq!(id.encode_to_vec(), vec![0x0a, 2, b'S', b'1']);
    }

    #[test]
    fn scalar_value_round_trips() {
        let v = Value {
            r#type: value::Type::Scalar as i32,
            scalar: Some(value::Scalar { value: 2.5 }),
            ..Default::default()
        };
        let decoded = Value::decode(v.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(decoded, v);
        assert_eq!(decoded.r#type(), value::Type::Scalar);
    }

    #[test]
    fn every_generated_message_has_its_mesos_descriptor() {
        let call = scheduler::Call::default();
        assert_eq!(call.descriptor().full_name(), "mesos.v1.scheduler.Call");
        let field = call
            .descriptor()
            .get_field_by_name("update_framework")
            .expect("field");
        assert_eq!(field.number(), 19);
    }
}
