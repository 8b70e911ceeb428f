//! Records when the master was built, for `/version` and GET_VERSION (`build_date`, `build_time`),
//! as Mesos reports its own build. `SOURCE_DATE_EPOCH` wins, for reproducible builds.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=MESOBLK_BUILD_TIME={secs}");
    println!("cargo:rustc-env=MESOBLK_BUILD_USER={user}");
}
