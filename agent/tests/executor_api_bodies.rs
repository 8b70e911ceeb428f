//! Arbitrary bodies never break `POST /api/v1/executor`: every answer is a 4xx (or 202 for a
//! body that happens to be a valid call), never a 5xx, the server keeps answering, and only
//! accepted calls reach the sinks.

mod executor_api_common;

use executor_api_common::*;
use proptest::prelude::*;
use reqwest::Method;

fn valid_update() -> String {
    format!(
        r#"{{"type":"UPDATE","framework_id":{{"value":"{FRAMEWORK}"}},"executor_id":{{"value":"ex"}},"update":{{"status":{{"task_id":{{"value":"t"}},"state":"TASK_RUNNING","source":"SOURCE_EXECUTOR","uuid":"AAECAwQFBgcICQoLDA0ODw=="}}}}}}"#
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_get_client_errors(
        protobuf in proptest::collection::vec(any::<u8>(), 0..256),
        cut in 0usize..400,
        byte in any::<u8>(),
    ) {
        let dir = work_dir();
        let agent = Agent::start(dir.path(), 0, |_| {});
        let launch = launch(false, executor("ex", "exec sleep 60"), vec![task("t", "x")], &[]);
        agent.api.launch(launch).unwrap();
        let url = agent.url();
        let mut mangled = valid_update().into_bytes();
        let at = cut % mangled.len();
        mangled[at] = byte;
        let truncated = valid_update().into_bytes()[..cut.min(valid_update().len() - 1)].to_vec();
        let accepted = agent.block_on(async {
            let mut accepted = 0;
            for (content_type, body) in [
                ("application/x-protobuf", protobuf.clone()),
                ("application/json", protobuf.clone()),
                ("application/json", mangled.clone()),
                ("application/json", truncated.clone()),
            ] {
                let answer =
                    request(&url, Method::POST, &[("content-type", content_type)], body).await;
                assert!(
                    (400..500).contains(&answer.status) || answer.status == 202,
                    "{content_type}: {}",
                    answer.status
                );
                accepted += usize::from(answer.status == 202);
            }
            accepted
        });
        // Only what was accepted (a mangled byte may leave a valid call) reached the sinks.
        let forwarded = agent.updates.try_iter().count() + agent.messages.try_iter().count();
        prop_assert_eq!(forwarded, accepted);
        agent.api.shutdown_executor(FRAMEWORK, "ex").unwrap();
    }
}
