//! The email sender against the real broker and a real SMTP server (aiosmtpd).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use herald_testkit::smtp::SmtpSink;
use messaging_core::Address;
use messaging_core::events::AttemptResult;
use messaging_core::failure::FailureClass;
use messaging_core::values::Email;
use sender_email::{EmailConfig, EmailSender, SmtpSettings, TenantMail, TlsMode};
use sender_runtime::testing::{SenderHarness, quick_config};

const WAIT: Duration = Duration::from_secs(20);

fn config(sink: &SmtpSink) -> EmailConfig {
    EmailConfig {
        smtp: SmtpSettings {
            host: "127.0.0.1".into(),
            port: sink.port(),
            tls: TlsMode::None,
            from: "Herald <noreply@herald.test>".into(),
            timeout_ms: 3_000,
            tenants: HashMap::from([(
                "acme".to_owned(),
                TenantMail {
                    from: Some("Acme Shop <shop@acme.test>".into()),
                    reply_to: Some("help@acme.test".into()),
                },
            )]),
            ..SmtpSettings::default()
        },
    }
}

fn email(address: &str) -> Address {
    Address::Email(Email::parse(address).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_is_delivered_with_text_html_and_the_tenants_identity() {
    let sink = SmtpSink::start().await;
    let h =
        SenderHarness::start::<EmailSender>("email_delivered", quick_config(), config(&sink)).await;
    let mut job = h.job(email("ann@example.org"), "Your order has shipped.");
    job.content.subject = Some("Order 42".into());
    job.content.html = Some("<p>Your order has <b>shipped</b>.</p>".into());
    h.publish(&job).await;

    let event = h.next_event(WAIT).await.expect("an event");
    let AttemptResult::Delivered {
        provider_message_id,
    } = &event.result
    else {
        panic!("{event:?}")
    };
    assert!(
        provider_message_id
            .as_deref()
            .unwrap_or_default()
            .contains("queued as"),
        "{provider_message_id:?}"
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    for expected in [
        "Subject: Order 42",
        "From: \"Acme Shop\" <shop@acme.test>",
        "Reply-To: help@acme.test",
        "To: ann@example.org",
        "multipart/alternative",
        "Your order has shipped.",
        "<b>shipped</b>",
        &format!("Message-ID: <{}@herald>", job.delivery_id),
    ] {
        assert!(mail.contains(expected), "missing {expected:?} in:\n{mail}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_answer_is_retried_and_an_unknown_mailbox_fails_permanently() {
    let sink = SmtpSink::start().await;
    let h =
        SenderHarness::start::<EmailSender>("email_4xx_5xx", quick_config(), config(&sink)).await;
    let busy = h.job(email("tempfail@example.org"), "later");
    let gone = h.job(email("nosuchuser@example.org"), "never");
    h.publish(&busy).await;
    h.publish(&gone).await;
    let events = h
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e.delivery_id == busy.delivery_id)
                .count()
                >= 2
                && e.iter().any(|e| e.delivery_id == gone.delivery_id)
        })
        .await;
    for event in events.iter().filter(|e| e.delivery_id == busy.delivery_id) {
        let AttemptResult::RetryScheduled { failure, .. } = &event.result else {
            panic!("{event:?}")
        };
        assert_eq!(
            (failure.class, failure.code.as_str()),
            (FailureClass::Temporary, "smtp_transient")
        );
        assert!(failure.message.contains("451"), "{}", failure.message);
    }
    let gone_event = events
        .iter()
        .find(|e| e.delivery_id == gone.delivery_id)
        .unwrap();
    let AttemptResult::Failed { failure } = &gone_event.result else {
        panic!("{gone_event:?}")
    };
    assert_eq!(
        (failure.class, failure.code.as_str()),
        (FailureClass::Permanent, "invalid_address")
    );
    assert!(failure.message.contains("550"), "{}", failure.message);
    assert!(sink.messages().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_opens_the_breaker_and_every_mail_arrives_once_it_is_back() {
    let mut sink = SmtpSink::start().await;
    let h =
        SenderHarness::start::<EmailSender>("email_breaker", quick_config(), config(&sink)).await;
    sink.stop();
    let jobs: Vec<_> = (0..6)
        .map(|n| h.job(email(&format!("user{n}@example.org")), "hello"))
        .collect();
    for job in &jobs {
        h.publish(job).await;
    }
    let open = h
        .wait_readiness(WAIT, |status, body| {
            status == 503 && body.contains("breaker open")
        })
        .await;
    assert!(open, "readiness reports the open breaker");

    sink.restart();
    let events = h
        .events_until(Duration::from_secs(60), |e| {
            e.iter()
                .filter(|e| e.result.status() == "delivered")
                .count()
                == jobs.len()
        })
        .await;
    let unhealthy = events
        .iter()
        .filter(|e| matches!(&e.result, AttemptResult::RetryScheduled { failure, .. } if failure.class == FailureClass::Unhealthy))
        .count();
    assert!(
        unhealthy >= 3,
        "attempts while the server was down are class (c): {unhealthy}"
    );
    assert_eq!(sink.messages().len(), jobs.len(), "every mail arrived once");
    assert_eq!(h.readyz().await.0, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_host_the_sender_says_it_is_not_configured() {
    let h = SenderHarness::start::<EmailSender>(
        "email_unconfigured",
        quick_config(),
        EmailConfig::default(),
    )
    .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503);
    assert!(body.contains("HERALD_SMTP__HOST"), "{body}");
    h.stop().await;
}
