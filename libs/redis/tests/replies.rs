//! Replies from an engine process reach the waiting gateway over Redis pub/sub, against a real
//! redis-server. Without one the test prints `SKIPPED: <reason>` and passes.

use std::sync::Arc;
use std::time::Duration;

use loyalty_core::ports::CachedStatus;
use loyalty_core::replies::{EventReply, ReplyResult, ReplySink, ReplyWaiters};
use loyalty_domain::{EventId, Fingerprint, FranchiseId, Outcome};
use loyalty_redis::replies::{reply_channel, serve_replies, RedisReplySink};
use loyalty_testkit::redis::RedisServer;

#[tokio::test]
async fn a_reply_reaches_only_the_gateway_it_names() {
    let server = match RedisServer::available() {
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
        Ok(_) => RedisServer::start().expect("starting redis-server"),
    };
    let waiters = ReplyWaiters::new();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve_replies(
        server.url(),
        "t:".into(),
        "gw-1".into(),
        Arc::clone(&waiters),
        stop_rx,
    ));
    // The subscription is live once Redis counts a subscriber on the channel.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(reply_channel("t:", "gw-1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let f = FranchiseId::parse("f1").unwrap();
    let fp = Fingerprint::of(&[b"x"]);
    let mine = waiters.register(&f, &EventId::parse("e1").unwrap(), fp);
    let other = waiters.register(&f, &EventId::parse("e2").unwrap(), fp);
    let reply = |event: &str, to: &str| EventReply {
        franchise_id: f.clone(),
        event_id: EventId::parse(event).unwrap(),
        fingerprint: fp,
        result: ReplyResult::Applied(Outcome::Enrolled { created: true }),
        request_id: Some("r1".into()),
        reply_to: Some(to.into()),
        status: Some(CachedStatus {
            program_version: 1,
            franchise_id: f.clone(),
            version: 7,
            json: bytes::Bytes::from_static(b"{\"points\":50}"),
        }),
    };
    let sink = RedisReplySink::connect(&server.url(), "t:").await.unwrap();
    // e2's reply names another gateway: it must not arrive here.
    sink.publish(vec![reply("e1", "gw-1"), reply("e2", "gw-2")]);
    let got = mine
        .wait(Duration::from_secs(5))
        .await
        .expect("reply delivered");
    assert_eq!(
        got.result,
        ReplyResult::Applied(Outcome::Enrolled { created: true })
    );
    assert_eq!(got.request_id.as_deref(), Some("r1"));
    assert_eq!(got.status.as_ref().unwrap().version, 7);
    assert_eq!(
        got.status.as_ref().unwrap().json.as_ref(),
        b"{\"points\":50}"
    );
    assert!(
        other.wait(Duration::from_millis(300)).await.is_none(),
        "a reply for another gateway arrived"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}
