//! The shared test harness. Each server helper starts a real server on a free loopback port
//! with its own temporary directory and stops it when dropped, so a test reads as the scenario
//! it checks. A server that cannot be found on this machine is reported with how to get it;
//! tests that need it say plainly in their output that they were skipped, and why.

pub mod chromium;
pub mod faulty_store;
pub mod http_sink;
pub mod log_contract;
pub mod pending_codes_contract;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod smtp_sink;
pub mod store_contract;
pub mod tansu;

/// Whether tests must run their servers rather than skip (`LOYALTY_REQUIRE_SERVERS=1`, set by
/// `.ci/run`): a missing server then fails the test instead of skipping it.
pub fn servers_required() -> bool {
    std::env::var("LOYALTY_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Turns "this server is missing" into a skip reason, or into a failure when servers are
/// required.
pub fn missing(reason: String) -> String {
    if servers_required() {
        panic!("{reason} (LOYALTY_REQUIRE_SERVERS=1: this test must run here)");
    }
    reason
}
