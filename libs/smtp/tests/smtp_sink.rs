//! The SMTP adapter against a real SMTP server (loyalty-testkit's `SmtpSink`, aiosmtpd): the
//! e-mail as documented (headers, decoded body), and refusals classified as the delivery
//! worker needs them.

use std::time::Duration;

use loyalty_domain::{FranchiseId, MemberId};
use loyalty_smtp::{Channel, Message, MessageSender, SendError, SmtpConfig, SmtpSender};
use loyalty_testkit::smtp_sink::SmtpSink;

const WAIT: Duration = Duration::from_secs(15);

fn message(to: &str) -> Message {
    Message {
        id: "out-7f3a".into(),
        franchise_id: FranchiseId::parse("cafe-bleu").unwrap(),
        member_id: MemberId::parse("m-1").unwrap(),
        campaign_id: "winback".into(),
        channel: Channel::Email,
        to: to.into(),
        subject: Some("Un café offert, Élodie ☕".into()),
        body: "Bonjour Élodie,\n\nVotre café est offert cette semaine.\n\n\
               Se désinscrire : https://x.test/opt-out/abc?sig=1\n"
            .into(),
        opt_out_url: "https://x.test/opt-out/abc?sig=1".into(),
        attempt: 1,
    }
}

/// A sink, or `None` (the test prints why it is skipped).
fn sink() -> Option<SmtpSink> {
    if let Err(reason) = SmtpSink::available() {
        println!("SKIPPED: {reason}");
        return None;
    }
    Some(SmtpSink::start().unwrap())
}

fn sender(port: u16, timeout: Duration) -> SmtpSender {
    let mut c = SmtpConfig::new("127.0.0.1", port, "Café Bleu <offers@cafe-bleu.example>");
    c.timeout = timeout;
    SmtpSender::new(&c).unwrap()
}

#[tokio::test]
async fn the_mail_arrives_with_subject_body_and_one_click_unsubscribe() {
    let Some(sink) = sink() else { return };
    let s = sender(sink.port(), Duration::from_secs(10));
    assert_eq!(s.name(), "smtp");
    assert_eq!(s.channel(), Channel::Email);
    let m = message("elodie@example.org");
    s.send(&m).await.unwrap();
    let mails = sink.wait_for(1, WAIT).await.unwrap();
    let got = &mails[0];
    assert_eq!(got.from, "offers@cafe-bleu.example");
    assert_eq!(got.to, vec!["elodie@example.org".to_owned()]);
    assert_eq!(got.subject, "Un café offert, Élodie ☕");
    // SMTP may end the text with one more line break.
    assert_eq!(got.body.trim_end(), m.body.trim_end());
    assert_eq!(got.header("To"), Some("elodie@example.org"));
    assert_eq!(
        got.header("From"),
        Some("Café Bleu <offers@cafe-bleu.example>")
    );
    assert_eq!(
        got.header("Message-ID"),
        Some("<out-7f3a@cafe-bleu.example>")
    );
    assert_eq!(
        got.header("List-Unsubscribe"),
        Some("<https://x.test/opt-out/abc?sig=1>")
    );
    assert_eq!(
        got.header("List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    let ct = got.header("Content-Type").unwrap().to_ascii_lowercase();
    assert!(ct.starts_with("text/plain") && ct.contains("utf-8"), "{ct}");
    assert!(got.header("Date").is_some());
    // The raw message is 7-bit clean on the wire unless it says 8bit.
    let cte = got.header("Content-Transfer-Encoding").unwrap_or("7bit");
    assert!(got.raw().unwrap().is_ascii() || cte == "8bit", "{cte}");

    // The next attempt of the same message keeps its Message-ID (duplicates can be dropped).
    let mut again = m.clone();
    again.attempt = 2;
    s.send(&again).await.unwrap();
    let mails = sink.wait_for(2, WAIT).await.unwrap();
    assert_eq!(
        mails[1].header("Message-ID"),
        Some("<out-7f3a@cafe-bleu.example>")
    );
}

#[tokio::test]
async fn a_550_recipient_is_permanent_and_a_451_transient() {
    let Some(sink) = sink() else { return };
    let s = sender(sink.port(), Duration::from_secs(10));
    let e = s
        .send(&message("reject-550@example.org"))
        .await
        .unwrap_err();
    let SendError::Permanent(why) = &e else {
        panic!("permanent expected: {e}");
    };
    assert!(why.contains("550"), "{why}");
    assert!(!why.contains("reject-550@example.org"), "{why}");
    let e = s.send(&message("defer-451@example.org")).await.unwrap_err();
    let SendError::Transient(why) = &e else {
        panic!("transient expected: {e}");
    };
    assert!(why.contains("451"), "{why}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn invalid_messages_are_permanent_before_any_connection() {
    // No server at all: these fail before connecting.
    let port = loyalty_testkit::ports::free_port().unwrap();
    let s = sender(port, Duration::from_secs(5));
    for m in [
        message("not an address"),
        Message {
            subject: None,
            ..message("a@example.org")
        },
        Message {
            opt_out_url: "https://x.test/a b".into(),
            ..message("a@example.org")
        },
        Message {
            channel: Channel::Sms,
            ..message("a@example.org")
        },
    ] {
        assert!(
            matches!(s.send(&m).await, Err(SendError::Permanent(_))),
            "{m:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = loyalty_testkit::ports::free_port().unwrap();
    let s = sender(port, Duration::from_secs(5));
    let e = s.send(&message("a@example.org")).await.unwrap_err();
    assert!(matches!(e, SendError::Transient(_)), "{e}");
}

#[tokio::test]
async fn a_relay_that_never_greets_times_out_transient() {
    // Accepts the connection, never says 220.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(conn);
    });
    let s = sender(port, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = s.send(&message("a@example.org")).await.unwrap_err();
    let SendError::Transient(why) = &e else {
        panic!("transient expected: {e}");
    };
    assert!(why.starts_with("timed out"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(5));
    held.abort();
}
