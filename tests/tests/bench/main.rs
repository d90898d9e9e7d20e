//! The benchmarks (ignored by default, run by `loadtest/bench.sh` and `scripts/run-ignored.sh`),
//! one test binary: `cargo test --release -p loyalty-tests --test bench -- --ignored ingest_bench::`.

mod dashboard_bench;
mod ingest_bench;
mod multiprocess_bench;
