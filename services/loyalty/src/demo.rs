//! The demo franchise `loyalty dev` creates on first start, so that a checkout can be tried
//! at once. Its keys are printed and saved to `<data_dir>/demo-keys.env` (shell syntax), the
//! only place they exist in clear.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use loyalty_core::ports::StateStore;
use loyalty_core::provisioning::{create_franchise, create_store};
use loyalty_domain::Program;

pub const KEYS_FILE: &str = "demo-keys.env";

/// Creates the demo franchise if the store has no franchise yet.
pub async fn ensure_demo(store: &dyn StateStore, data_dir: &Path) -> anyhow::Result<()> {
    let keys_path = data_dir.join(KEYS_FILE);
    if !store.franchises().await?.is_empty() {
        if keys_path.exists() {
            println!("demo keys: {}", keys_path.display());
        }
        return Ok(());
    }
    let (f, hq_key) = create_franchise(store, "Demo Coffee", &Program::demo()).await?;
    let mut env = String::new();
    let _ = writeln!(env, "FRANCHISE_ID={}", f.id);
    let _ = writeln!(env, "HQ_KEY={hq_key}");
    for (i, name) in [
        "Demo Coffee Bastille",
        "Demo Coffee Opéra",
        "Demo Coffee Gare du Nord",
    ]
    .iter()
    .enumerate()
    {
        let (s, key) = create_store(store, &f.id, name).await?;
        let _ = writeln!(env, "STORE{}_ID={}", i + 1, s.id);
        let _ = writeln!(env, "STORE{}_KEY={key}", i + 1);
    }
    std::fs::write(&keys_path, &env).with_context(|| format!("writing {}", keys_path.display()))?;
    println!(
        "demo franchise \"Demo Coffee\" created with three stores; keys (also in {}):",
        keys_path.display()
    );
    for line in env.lines() {
        println!("  {line}");
    }
    Ok(())
}
