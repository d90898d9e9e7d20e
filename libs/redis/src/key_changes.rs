//! API key changes between gateways over Redis pub/sub (`{prefix}keys:changed`): see
//! [`loyalty_core::key_changes`].

use std::sync::Arc;

use loyalty_core::key_changes::KeyChanges;
use loyalty_core::metrics::metrics;
use loyalty_core::Result;
use redis::aio::ConnectionManager;
use tokio::sync::watch;

use crate::replies::{publisher, subscribe_loop, Received};

/// The channel of key changes.
pub fn key_changes_channel(prefix: &str) -> String {
    format!("{prefix}keys:changed")
}

/// Publishes key changes (the hash of the key, never the key).
pub struct RedisKeyChanges {
    conn: ConnectionManager,
    channel: String,
}

impl RedisKeyChanges {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisKeyChanges> {
        Ok(RedisKeyChanges {
            conn: publisher(url).await?,
            channel: key_changes_channel(prefix),
        })
    }
}

impl KeyChanges for RedisKeyChanges {
    fn announce(&self, key_hash: &str) {
        metrics()
            .key_changes
            .with_label_values(&["announced"])
            .inc();
        let (mut conn, channel, hash) =
            (self.conn.clone(), self.channel.clone(), key_hash.to_owned());
        tokio::spawn(async move {
            let sent: redis::RedisResult<()> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&hash)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                // The other gateways' TTL still bounds how long they take the key.
                tracing::warn!(error = %e, "announcing a key change failed");
            }
        });
    }
}

/// What a gateway does with what it hears: forget one key (`Some(hash)`), or every key
/// (`None`: (re)subscribed, announcements may have been missed meanwhile).
pub type Forget = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Subscribes to the key changes and calls `forget` until `shutdown` turns true,
/// resubscribing after a connection loss.
pub async fn serve_key_changes(
    url: String,
    prefix: String,
    forget: Forget,
    shutdown: watch::Receiver<bool>,
) {
    let channel = key_changes_channel(&prefix);
    subscribe_loop(&url, &channel, shutdown, |received| match received {
        Received::Subscribed => {
            metrics()
                .key_changes
                .with_label_values(&["resubscribed"])
                .inc();
            forget(None)
        }
        Received::Message(payload) => match std::str::from_utf8(payload) {
            Ok(hash) => {
                metrics().key_changes.with_label_values(&["received"]).inc();
                forget(Some(hash))
            }
            Err(_) => tracing::warn!("an undecodable key change"),
        },
    })
    .await;
}
