//! `loyalty dead-letters replay`: appends the dead letters not replayed yet back to the topic
//! they came from, once their cause is fixed (see `loyalty_core::dead_letters`). On the
//! embedded log the node must be stopped (the data directory's lock); on Kafka it runs beside
//! the engines.

use loyalty_core::dead_letters::{replay as replay_topic, ReplayOptions};

use crate::configuration::DevConfig;
use crate::startup::open_log;

/// Replays `topic` (default: the command topic's dead letters); prints what it did.
pub async fn replay(
    config: &DevConfig,
    topic: Option<&str>,
    options: &ReplayOptions,
) -> anyhow::Result<()> {
    let topic = topic.unwrap_or(&config.dead_letter_topic).to_string();
    let (log, _lock) = open_log(config)?;
    let report = replay_topic(log.as_ref(), &topic, options).await?;
    let by = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "{}: read {} dead letters ({}); {} {} ({})",
        topic,
        report.read.values().sum::<u64>(),
        by(&report.read),
        if options.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        report.total_replayed(),
        by(&report.replayed)
    );
    tracing::info!(
        topic,
        replayed = report.total_replayed(),
        dry_run = options.dry_run,
        "dead letters replayed"
    );
    Ok(())
}
