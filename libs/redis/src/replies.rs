//! Request-reply across processes over Redis pub/sub.
//!
//! When gateways and engines are separate processes, a gateway names its own channel in every
//! command it appends (`reply_to`); once the owning actor's effects are durable, the engine
//! publishes the [`EventReply`] (JSON) on `{prefix}replies:{reply_to}` and the gateway hands it to
//! its waiters. Pub/sub delivers at most once and only to a subscribed gateway: a lost reply is
//! harmless, the request answers 202 at its deadline and the event is applied exactly once
//! anyway (the log and the store carry the truth, never the reply).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loyalty_core::replies::{EventReply, ReplySink, ReplyWaiters};
use loyalty_core::{Error, Result};
use redis::aio::ConnectionManager;
use tokio::sync::watch;

/// The channel of a gateway instance.
pub fn reply_channel(prefix: &str, reply_to: &str) -> String {
    format!("{prefix}replies:{reply_to}")
}

/// Publishes engine replies to the gateways that wait for them.
pub struct RedisReplySink {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisReplySink {
    /// A sink on `url` with the key prefix the gateways use.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisReplySink> {
        Ok(RedisReplySink {
            conn: publisher(url).await?,
            prefix: prefix.to_owned(),
        })
    }
}

/// A reconnecting connection to publish on.
pub(crate) async fn publisher(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| Error::Invalid(format!("redis url: {e}")))?;
    ConnectionManager::new(client)
        .await
        .map_err(|e| Error::Unavailable(format!("redis: {e}")))
}

impl ReplySink for RedisReplySink {
    fn publish(&self, replies: Vec<EventReply>) {
        let mut pipe = redis::pipe();
        let mut n = 0;
        for r in &replies {
            let Some(to) = &r.reply_to else { continue };
            let Ok(payload) = serde_json::to_vec(r) else {
                continue;
            };
            pipe.publish(reply_channel(&self.prefix, to), payload)
                .ignore();
            n += 1;
        }
        if n == 0 {
            return;
        }
        let mut conn = self.conn.clone();
        // Fire and forget: the engine never waits on a gateway.
        tokio::spawn(async move {
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "publishing replies failed");
            }
        });
    }
}

/// Subscribes to this gateway's channel and feeds `waiters` until `shutdown` turns true,
/// resubscribing after a connection loss.
pub async fn serve_replies(
    url: String,
    prefix: String,
    reply_to: String,
    waiters: Arc<ReplyWaiters>,
    shutdown: watch::Receiver<bool>,
) {
    let channel = reply_channel(&prefix, &reply_to);
    subscribe_loop(&url, &channel, shutdown, |received| {
        if let Received::Message(payload) = received {
            match serde_json::from_slice::<EventReply>(payload) {
                Ok(reply) => waiters.publish(vec![reply]),
                Err(e) => tracing::warn!(error = %e, "undecodable reply"),
            }
        }
    })
    .await;
}

/// What a subscription hands its handler.
pub(crate) enum Received<'a> {
    /// Subscribed (again, after a loss: what was published meanwhile was missed).
    Subscribed,
    Message(&'a [u8]),
}

/// Subscribes to `channel` and hands `on` every message until `shutdown` turns true,
/// resubscribing (after 500 ms) whenever the connection is lost.
pub(crate) async fn subscribe_loop(
    url: &str,
    channel: &str,
    mut shutdown: watch::Receiver<bool>,
    on: impl Fn(Received<'_>),
) {
    while !*shutdown.borrow() {
        let subscribed = async {
            let client = redis::Client::open(url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        let mut stream = match subscribed {
            Ok(p) => p.into_on_message(),
            Err(e) => {
                tracing::warn!(error = %e, channel, "subscription failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        on(Received::Subscribed);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => on(Received::Message(m.get_payload_bytes())),
                    None => break,
                },
                _ = shutdown.changed() => return,
            }
        }
        tracing::warn!(channel, "subscription lost; resubscribing");
    }
}
