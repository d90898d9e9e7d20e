//! The webhook adapter against a real HTTP server (loyalty-testkit's `HttpSink`): the request
//! as documented (body, signature, message id), and each failure classified as the delivery
//! worker needs it.

use std::time::{Duration, SystemTime};

use loyalty_domain::{FranchiseId, MemberId, Phone};
use loyalty_testkit::http_sink::{HttpSink, HttpSinkOptions};
use loyalty_webhook::{
    verify_signature, Channel, Message, MessageSender, Notifier, SendError, WebhookConfig,
    WebhookSender, DEFAULT_TOLERANCE,
};

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const WAIT: Duration = Duration::from_secs(10);

fn message() -> Message {
    Message {
        id: "out-42".into(),
        franchise_id: FranchiseId::parse("cafe-bleu").unwrap(),
        member_id: MemberId::parse("m-1").unwrap(),
        campaign_id: "winback".into(),
        channel: Channel::Sms,
        to: "+33612345678".into(),
        subject: None,
        body: "Vous nous manquez ! STOP: https://x.test/o/1".into(),
        opt_out_url: "https://x.test/o/1".into(),
        attempt: 2,
    }
}

fn sender(url: &str, timeout: Duration) -> WebhookSender {
    let mut config = WebhookConfig::new(url, SECRET);
    config.timeout = timeout;
    WebhookSender::new(&config, Channel::Sms).unwrap()
}

#[tokio::test]
async fn a_message_arrives_signed_with_its_id_and_documented_body() {
    let sink = HttpSink::start().await.unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    assert_eq!(MessageSender::name(&s), "webhook");
    assert_eq!(s.channel(), Channel::Sms);
    s.send(&message()).await.unwrap();
    let got = sink.wait_for(1, WAIT).await.unwrap();
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("loyalty-message-id"), Some("out-42"));
    let sig = r.header("loyalty-signature").expect("signature header");
    verify_signature(
        SECRET.as_bytes(),
        sig,
        &r.body,
        SystemTime::now(),
        DEFAULT_TOLERANCE,
    )
    .unwrap();
    // The wrong secret, or a byte changed, does not verify.
    assert!(verify_signature(
        b"another-secret-0123456789abcdef-01234",
        sig,
        &r.body,
        SystemTime::now(),
        DEFAULT_TOLERANCE
    )
    .is_err());
    let mut altered = r.body.clone();
    altered[1] ^= 1;
    assert!(verify_signature(
        SECRET.as_bytes(),
        sig,
        &altered,
        SystemTime::now(),
        DEFAULT_TOLERANCE
    )
    .is_err());
    assert_eq!(
        r.json().unwrap(),
        serde_json::json!({
            "type": "campaign_message", "id": "out-42", "franchise_id": "cafe-bleu",
            "member_id": "m-1", "campaign_id": "winback", "channel": "sms",
            "to": "+33612345678", "subject": null,
            "body": "Vous nous manquez ! STOP: https://x.test/o/1",
            "opt_out_url": "https://x.test/o/1", "attempt": 2
        })
    );
}

#[tokio::test]
async fn a_one_time_code_is_a_webhook_of_its_own_type() {
    let sink = HttpSink::start().await.unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    let phone = Phone::parse("+33612345678").unwrap();
    s.send_code(&phone, "042917", "fr").await.unwrap();
    s.send_code(&phone, "111111", "en").await.unwrap();
    let got = sink.wait_for(2, WAIT).await.unwrap();
    let v = got[0].json().unwrap();
    assert_eq!(v["type"], "enrolment_code");
    assert_eq!(v["to"], "+33612345678");
    assert_eq!(v["code"], "042917");
    assert_eq!(v["lang"], "fr");
    assert_eq!(v["channel"], "sms");
    assert_eq!(v["body"], "Votre code de confirmation : 042917");
    assert_eq!(
        got[1].json().unwrap()["body"],
        "Your confirmation code: 111111"
    );
    let id = v["id"].as_str().unwrap();
    assert_eq!(got[0].header("loyalty-message-id"), Some(id));
    assert_ne!(got[1].header("loyalty-message-id"), Some(id));
    verify_signature(
        SECRET.as_bytes(),
        got[0].header("loyalty-signature").unwrap(),
        &got[0].body,
        SystemTime::now(),
        DEFAULT_TOLERANCE,
    )
    .unwrap();
}

#[tokio::test]
async fn a_503_is_transient_with_retry_after_and_the_retry_keeps_the_id() {
    let sink = HttpSink::start_with(HttpSinkOptions::failing(503, 1).retry_after("30"))
        .await
        .unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    let e = s.send(&message()).await.unwrap_err();
    assert_eq!(
        e,
        SendError::Transient("receiver answered HTTP 503 (Retry-After: 30)".into())
    );
    // The worker's next attempt: accepted, same message id.
    let mut again = message();
    again.attempt = 3;
    s.send(&again).await.unwrap();
    let got = sink.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[0].header("loyalty-message-id"), Some("out-42"));
    assert_eq!(got[1].header("loyalty-message-id"), Some("out-42"));
    assert_eq!(got[1].json().unwrap()["attempt"], 3);
}

#[tokio::test]
async fn a_429_is_transient_and_a_400_permanent() {
    let sink = HttpSink::start_with(HttpSinkOptions::failing(429, 1))
        .await
        .unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    assert!(matches!(
        s.send(&message()).await,
        Err(SendError::Transient(_))
    ));

    let sink = HttpSink::start_with(HttpSinkOptions::failing(400, 1))
        .await
        .unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    assert_eq!(
        s.send(&message()).await,
        Err(SendError::Permanent("receiver answered HTTP 400".into()))
    );
    // A code refused permanently is `Invalid` for the enrolment page.
    let sink = HttpSink::start_with(HttpSinkOptions::failing(404, 1))
        .await
        .unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    let phone = Phone::parse("+33612345678").unwrap();
    let e = s.send_code(&phone, "042917", "fr").await.unwrap_err();
    assert!(matches!(e, loyalty_core::Error::Invalid(_)), "{e}");
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_transient() {
    let sink = HttpSink::start_with(HttpSinkOptions::hanging())
        .await
        .unwrap();
    let s = sender(&sink.url(), Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = s.send(&message()).await.unwrap_err();
    let SendError::Transient(why) = &e else {
        panic!("transient expected: {e}");
    };
    assert!(why.starts_with("timed out"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // It did reach the receiver (which may have taken it: hence the stable id).
    sink.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = loyalty_testkit::ports::free_port().unwrap();
    let s = sender(
        &format!("http://127.0.0.1:{port}/hook"),
        Duration::from_secs(5),
    );
    let e = s.send(&message()).await.unwrap_err();
    let SendError::Transient(why) = &e else {
        panic!("transient expected: {e}");
    };
    assert!(why.starts_with("could not connect"), "{why}");
    let phone = Phone::parse("+33612345678").unwrap();
    let e = s.send_code(&phone, "042917", "fr").await.unwrap_err();
    assert!(matches!(e, loyalty_core::Error::Unavailable(_)), "{e}");
}

#[tokio::test]
async fn a_message_of_another_channel_is_permanent() {
    let sink = HttpSink::start().await.unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    let mut m = message();
    m.channel = Channel::Email;
    assert!(matches!(s.send(&m).await, Err(SendError::Permanent(_))));
    assert!(sink.requests().is_empty());
}

#[tokio::test]
async fn deliveries_are_counted_by_type_and_result() {
    let sink = HttpSink::start_with(HttpSinkOptions::failing(500, 1))
        .await
        .unwrap();
    let s = sender(&sink.url(), Duration::from_secs(5));
    let _ = s.send(&message()).await;
    s.send(&message()).await.unwrap();
    let text = loyalty_core::metrics::metrics().render();
    for series in [
        "loyalty_webhook_deliveries_total{result=\"transient\",type=\"campaign_message\"}",
        "loyalty_webhook_deliveries_total{result=\"ok\",type=\"campaign_message\"}",
        "loyalty_webhook_delivery_seconds_count{type=\"campaign_message\"}",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}
