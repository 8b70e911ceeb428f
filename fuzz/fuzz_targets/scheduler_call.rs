//! Feeds arbitrary bytes to the scheduler Call decoders (JSON and protobuf) as the master does
//! for `POST /api/v1/scheduler`: any input must give a call or an error, never a panic, and a
//! decoded call's encoding must be a fixed point (decode, encode again: the same bytes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::Call;

fuzz_target!(|data: &[u8]| {
    for content_type in [ContentType::Json, ContentType::Protobuf] {
        if let Ok(call) = content_type.decode::<Call>(data) {
            let encoded = content_type.encode(&call);
            let again: Call = content_type.decode(&encoded).expect("own encoding decodes");
            assert_eq!(content_type.encode(&again), encoded);
        }
    }
});
