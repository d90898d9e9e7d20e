//! The pending codes contract (`loyalty_testkit::pending_codes_contract`) against the
//! in-process adapter.

use std::sync::Arc;

use loyalty_core::pending_codes::PendingCodes;
use loyalty_embedded::EmbeddedPendingCodes;
use loyalty_testkit::pending_codes_contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pending_codes_meet_the_contract() -> anyhow::Result<()> {
    let codes = Arc::new(EmbeddedPendingCodes::new(10));
    pending_codes_contract::run_all(codes as Arc<dyn PendingCodes>, 10, "emb").await
}
