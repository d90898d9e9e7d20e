//! `loyalty`: the platform's binary. `loyalty dev` runs gateway, engine and embedded adapters in
//! one process with no server installed.

pub mod audit;
pub mod client_faults;
pub mod configuration;
pub mod dead_letters;
pub mod demo;
pub mod privacy;
pub mod projections;
pub mod startup;
pub mod telemetry;
