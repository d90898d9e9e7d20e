//! The contract of the [`PendingCodes`] port (`loyalty_core::pending_codes`), run against the
//! in-process adapter and the Redis one, so that the self-enrolment page cannot tell them apart.
//!
//! What it pins down: a put is found under its key and scope only; a wrong code uses a try and
//! says how many are left; the right code works once (single use); once every try is used even
//! the right code is locked out until expiry; an entry is gone after its TTL; a key cannot be
//! put twice while pending; concurrent tries never use more tries than allowed and only one
//! sees the right code; removed entries are gone; malformed keys are `Invalid`; and the store
//! is bounded (`Full` past `capacity`, room again once codes expire).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use loyalty_core::pending_codes::{CodeHash, PendingCode, PendingCodes, Put, Verdict};
use loyalty_core::Error;

type R = anyhow::Result<()>;

const SCOPE: &str = "fr1/st1";

fn hash(n: u8) -> CodeHash {
    [n; 32]
}

fn code(n: u8, ttl: Duration, tries: u32) -> PendingCode {
    PendingCode {
        scope: SCOPE.into(),
        code_hash: hash(n),
        payload: format!("payload-{n}").into_bytes(),
        ttl,
        max_attempts: tries,
    }
}

const LONG: Duration = Duration::from_secs(60);

/// Runs every check against `codes`, built with room for exactly `capacity` codes (at least 3
/// and at most 50), and empty. `tag` keeps the keys of runs on one server apart.
pub async fn run_all(codes: Arc<dyn PendingCodes>, capacity: usize, tag: &str) -> R {
    let c = codes.as_ref();
    right_code_works_once(c, tag)
        .await
        .context("right_code_works_once")?;
    wrong_codes_use_tries(c, tag)
        .await
        .context("wrong_codes_use_tries")?;
    other_scope_is_gone(c, tag)
        .await
        .context("other_scope_is_gone")?;
    codes_expire(c, tag).await.context("codes_expire")?;
    keys_are_single(c, tag).await.context("keys_are_single")?;
    removed_codes_are_gone(c, tag)
        .await
        .context("removed_codes_are_gone")?;
    bad_names_are_invalid(c)
        .await
        .context("bad_names_are_invalid")?;
    concurrent_tries_are_counted(Arc::clone(&codes), tag)
        .await
        .context("concurrent_tries_are_counted")?;
    bounded(c, capacity, tag).await.context("bounded")?;
    Ok(())
}

/// The right code answers its payload once; the next try finds nothing.
pub async fn right_code_works_once(c: &dyn PendingCodes, tag: &str) -> R {
    let key = format!("{tag}-once");
    ensure!(c.put(&key, code(1, LONG, 5)).await? == Put::Stored);
    let v = c.verify(&key, SCOPE, &hash(1)).await?;
    ensure!(
        v == Verdict::Right {
            payload: b"payload-1".to_vec()
        },
        "{v:?}"
    );
    let again = c.verify(&key, SCOPE, &hash(1)).await?;
    ensure!(again == Verdict::Gone, "used twice: {again:?}");
    Ok(())
}

/// Each wrong code uses a try; the last wrong one locks, and then even the right code is
/// locked out.
pub async fn wrong_codes_use_tries(c: &dyn PendingCodes, tag: &str) -> R {
    let key = format!("{tag}-tries");
    c.put(&key, code(2, LONG, 3)).await?;
    for left in [2, 1] {
        let v = c.verify(&key, SCOPE, &hash(9)).await?;
        ensure!(
            v == Verdict::Wrong {
                left,
                payload: b"payload-2".to_vec()
            },
            "{v:?}"
        );
    }
    let last = c.verify(&key, SCOPE, &hash(9)).await?;
    ensure!(
        matches!(last, Verdict::Locked { retry_after } if retry_after <= LONG && retry_after > Duration::from_secs(50)),
        "{last:?}"
    );
    let right = c.verify(&key, SCOPE, &hash(2)).await?;
    ensure!(
        matches!(right, Verdict::Locked { .. }),
        "a locked code confirmed: {right:?}"
    );
    Ok(())
}

/// Another scope finds nothing and uses no try.
pub async fn other_scope_is_gone(c: &dyn PendingCodes, tag: &str) -> R {
    let key = format!("{tag}-scope");
    c.put(&key, code(3, LONG, 1)).await?;
    let v = c.verify(&key, "fr1/other", &hash(3)).await?;
    ensure!(v == Verdict::Gone, "{v:?}");
    let v = c.verify(&key, SCOPE, &hash(3)).await?;
    ensure!(
        matches!(v, Verdict::Right { .. }),
        "the try was used: {v:?}"
    );
    Ok(())
}

/// Past its TTL a code is gone, even the right one.
pub async fn codes_expire(c: &dyn PendingCodes, tag: &str) -> R {
    let key = format!("{tag}-expiry");
    let ttl = Duration::from_millis(150);
    c.put(&key, code(4, ttl, 5)).await?;
    // No signal exists for "time has passed": wait past the TTL.
    tokio::time::sleep(ttl * 3).await;
    let v = c.verify(&key, SCOPE, &hash(4)).await?;
    ensure!(v == Verdict::Gone, "an expired code answered {v:?}");
    ensure!(
        c.put(&key, code(4, LONG, 5)).await? == Put::Stored,
        "an expired key cannot be reused"
    );
    Ok(())
}

/// A pending key cannot be put again (`Conflict`), and the first entry is kept.
pub async fn keys_are_single(c: &dyn PendingCodes, tag: &str) -> R {
    let key = format!("{tag}-single");
    c.put(&key, code(5, LONG, 5)).await?;
    let second = c.put(&key, code(6, LONG, 5)).await;
    ensure!(matches!(second, Err(Error::Conflict(_))), "{second:?}");
    let v = c.verify(&key, SCOPE, &hash(5)).await?;
    ensure!(matches!(v, Verdict::Right { .. }), "{v:?}");
    Ok(())
}

/// A removed code is gone; removing an unknown key is fine.
pub async fn removed_codes_are_gone(c: &dyn PendingCodes, tag: &str) -> R {
    let key = format!("{tag}-removed");
    c.put(&key, code(7, LONG, 5)).await?;
    c.remove(&key).await?;
    c.remove(&key).await?;
    let v = c.verify(&key, SCOPE, &hash(7)).await?;
    ensure!(v == Verdict::Gone, "{v:?}");
    Ok(())
}

/// Malformed keys and scopes, and entries that cannot exist, are `Invalid`.
pub async fn bad_names_are_invalid(c: &dyn PendingCodes) -> R {
    let bad_key = c.put("has space", code(1, LONG, 1)).await;
    ensure!(matches!(bad_key, Err(Error::Invalid(_))), "{bad_key:?}");
    let no_try = c.put("k-no-try", code(1, LONG, 0)).await;
    ensure!(matches!(no_try, Err(Error::Invalid(_))), "{no_try:?}");
    let bad_scope = c.verify("k", "+33612345678 x", &hash(1)).await;
    ensure!(matches!(bad_scope, Err(Error::Invalid(_))), "{bad_scope:?}");
    Ok(())
}

/// 20 concurrent tries of a code with 3 tries, the right one among them: at most 3 answers
/// are not `Locked`, and at most one is `Right`.
pub async fn concurrent_tries_are_counted(codes: Arc<dyn PendingCodes>, tag: &str) -> R {
    let key = format!("{tag}-race");
    codes.put(&key, code(8, LONG, 3)).await?;
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let (codes, key) = (Arc::clone(&codes), key.clone());
        let h = if i % 2 == 0 { hash(8) } else { hash(99) };
        tasks.push(tokio::spawn(
            async move { codes.verify(&key, SCOPE, &h).await },
        ));
    }
    let (mut right, mut counted) = (0, 0);
    for t in tasks {
        match t.await?? {
            Verdict::Right { .. } => {
                right += 1;
                counted += 1;
            }
            Verdict::Wrong { .. } => counted += 1,
            Verdict::Locked { .. } | Verdict::Gone => {}
        }
    }
    ensure!(right <= 1, "the code was confirmed {right} times");
    ensure!(counted <= 3, "{counted} tries were counted out of 3");
    Ok(())
}

/// Past `capacity` live codes a put is `Full`; once short-lived ones expire there is room.
pub async fn bounded(c: &dyn PendingCodes, capacity: usize, tag: &str) -> R {
    ensure!((3..=50).contains(&capacity), "capacity {capacity}");
    // The other checks may have left codes pending: free them first.
    for k in ["tries", "expiry", "single", "race"] {
        c.remove(&format!("{tag}-{k}")).await?;
    }
    let ttl = Duration::from_millis(200);
    for i in 0..capacity {
        let put = c.put(&format!("{tag}-full-{i}"), code(1, ttl, 1)).await?;
        ensure!(put == Put::Stored, "code {i} of {capacity}: {put:?}");
    }
    let over = c.put(&format!("{tag}-over"), code(1, LONG, 1)).await?;
    ensure!(over == Put::Full, "past capacity: {over:?}");
    tokio::time::sleep(ttl * 3).await;
    let after = c.put(&format!("{tag}-over"), code(1, LONG, 1)).await?;
    ensure!(
        after == Put::Stored,
        "expired codes kept their room: {after:?}"
    );
    Ok(())
}
