//! Feeds arbitrary bytes to the operator Call decoders (`POST /api/v1`); never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::master::Call;

fuzz_target!(|data: &[u8]| {
    let _ = ContentType::Json.decode::<Call>(data);
    let _ = ContentType::Protobuf.decode::<Call>(data);
});
