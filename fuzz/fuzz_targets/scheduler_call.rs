//! Feeds arbitrary bytes to the scheduler Call decoders (JSON and protobuf) as the master does
//! for `POST /api/v1/scheduler`: any input must give a call or an error, never a panic, and a
//! decoded call's encoding must be a fixed point (decode, encode again: the same bytes).
//! Every decoded call then goes through the master's own checks that need no network or state:
//! `scheduler::validate`, the FrameworkInfo checks of SUBSCRIBE and UPDATE_FRAMEWORK, and the
//! resource checks of the tasks an ACCEPT launches.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesoblk_master::http::scheduler::validate;
use mesoblk_master::state::{task_validation, validation};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::Call;
use mesoblk_proto::mesos::v1::FrameworkInfo;

fuzz_target!(|data: &[u8]| {
    for content_type in [ContentType::Json, ContentType::Protobuf] {
        if let Ok(call) = content_type.decode::<Call>(data) {
            let encoded = content_type.encode(&call);
            let again: Call = content_type.decode(&encoded).expect("own encoding decodes");
            assert_eq!(content_type.encode(&again), encoded);
            check(&call);
        }
    }
});

/// The master's pure checks; their answers do not matter here, only that they give one.
fn check(call: &Call) {
    let _ = validate(call);
    if let Some(subscribe) = &call.subscribe {
        framework(
            &subscribe.framework_info,
            &subscribe.suppressed_roles,
            subscribe.offer_constraints.as_ref(),
        );
    }
    if let Some(update) = &call.update_framework {
        framework(
            &update.framework_info,
            &update.suppressed_roles,
            update.offer_constraints.as_ref(),
        );
    }
    let launches = call.accept.iter().flat_map(|a| &a.operations);
    for launch in launches.filter_map(|o| o.launch.as_ref()) {
        for task in &launch.task_infos {
            let _ = task_validation::validate_resources(&task.resources);
            let _ = task_validation::validate_unique_persistence_ids(&task.resources);
            let _ = task_validation::validate_single_role(&task.resources);
        }
    }
}

fn framework(
    info: &FrameworkInfo,
    suppressed: &[String],
    constraints: Option<&mesoblk_proto::mesos::v1::scheduler::OfferConstraints>,
) {
    let _ = validation::validate_framework_info(info);
    let _ = validation::failover_timeout(info);
    let _ = validation::validate_update(info, info);
    let roles = validation::framework_roles(info);
    let _ = validation::validate_allocator_options(&roles, suppressed, constraints);
}
