//! The shared test harness. Each server helper starts a real server on a free loopback port
//! with its own temporary directory and stops it when dropped, so a test reads as the scenario
//! it checks. A server that cannot be found on this machine is reported with how to get it;
//! tests that need it say plainly in their output that they were skipped, and why.

pub mod ports;
pub mod redis;
pub mod store_contract;
pub mod tansu;
