//! Feeds arbitrary bytes to the operator Call decoders (`POST /api/v1`) and the master's
//! validation of what they decode (`operator::validate`); never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesoblk_master::http::operator::validate;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::master::Call;

fuzz_target!(|data: &[u8]| {
    for content_type in [ContentType::Json, ContentType::Protobuf] {
        if let Ok(call) = content_type.decode::<Call>(data) {
            let _ = validate(&call);
        }
    }
});
