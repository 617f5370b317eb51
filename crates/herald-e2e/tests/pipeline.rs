//! The whole pipeline, every part real: a direct message through the API's route, its outbox
//! row relayed to RabbitMQ, the router's fan-out, the email sender delivering to a real SMTP
//! server, the sender's delivery events back through the router's tracking, and the outcome
//! a producer reads on `outcome.<tenant>` and from `GET /messages/{id}`.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use herald_storage::PgPool;
use herald_testkit::smtp::SmtpSink;
use messaging_core::events::{MessageOutcome, RecipientResult};
use messaging_core::failure::FailureClass;
use sender_email::{EmailConfig, EmailSender, SmtpSettings, TlsMode};
use serde_json::json;
use support::{System, WAIT};

#[sqlx::test(migrations = "../../migrations")]
async fn a_direct_message_goes_from_the_api_to_the_mailbox_and_back_as_an_outcome(pool: PgPool) {
    let mut system = System::start(pool, "e2e_pipeline").await;

    // The email sender, against a real SMTP server.
    let sink = SmtpSink::start().await;
    let email = EmailConfig {
        smtp: SmtpSettings {
            host: "127.0.0.1".into(),
            port: sink.port(),
            tls: TlsMode::None,
            from: "Herald <noreply@herald.test>".into(),
            timeout_ms: 3_000,
            tenants: HashMap::new(),
            ..SmtpSettings::default()
        },
    };
    system
        .run("e2e-sender-email", |service| {
            Box::pin(async move {
                let work = sender_runtime::run::start::<EmailSender>(
                    service,
                    sender_runtime::testing::quick_config(),
                    email,
                )
                .await
                .unwrap();
                (axum::Router::new(), work)
            })
        })
        .await;
    let outcomes = system
        .inspector
        .temporary_queue(&system.names.events_exchange(), "outcome.acme")
        .await;

    // Ann proves her mailbox (issue #17): Herald mails a link, she opens it. Her old one,
    // which the server now refuses for good (550), is imported as proven by the admin, as
    // from the system Herald replaces. A stranger's mailbox added in her name is never proven.
    let (status, added) = system
        .call(
            "POST",
            "/api/messaging/users/ann/addresses",
            Some(json!({"channel": "email", "address": "ann@example.org"})),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["verification"]["method"], "link");
    let token = wait_for_mail(&sink, "ann@example.org", "Confirm your address").await;
    let token = token
        .split("/verify/")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a link in the mail")
        .to_owned();
    let (status, _) = system
        .call("POST", &format!("/api/messaging/verify/{token}"), None)
        .await;
    assert_eq!(status, 200);
    for (address, verified, expect) in [
        ("nosuchuser@example.org", true, 201),
        ("stranger@example.org", false, 201),
    ] {
        let (status, body) = system
            .call(
                "POST",
                "/api/messaging/users/ann/addresses",
                Some(json!({"channel": "email", "address": address, "verified": verified})),
            )
            .await;
        assert_eq!(status, expect, "{body}");
    }
    wait_for_mail(&sink, "stranger@example.org", "Confirm your address").await;

    let (status, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({
            "userIds": ["ann"],
            "content": {"direct": {"subject": "Order 1001", "body": "Your order has shipped."}}
            })),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let message_id = accepted["messageId"].as_str().unwrap().to_owned();

    let published = system
        .inspector
        .wait_get(&outcomes, WAIT)
        .await
        .expect("an outcome for the producer");
    let outcome: MessageOutcome = serde_json::from_slice(&published.delivery.data).unwrap();
    assert_eq!(outcome.message_id.to_string(), message_id);
    assert_eq!((outcome.delivered, outcome.failed), (1, 1));
    let classes: Vec<Option<FailureClass>> = outcome
        .recipients
        .iter()
        .map(|r| match &r.result {
            RecipientResult::Delivered { .. } => None,
            RecipientResult::Failed { failure } => Some(failure.class),
        })
        .collect();
    assert!(classes.contains(&None) && classes.contains(&Some(FailureClass::Permanent)));

    // The mail is in the mailbox, once.
    let mails: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|m| m.contains("Your order has shipped."))
        .collect();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("ann@example.org"));
    // The unproven mailbox got its one verification mail and nothing else.
    let strangers: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|m| m.contains("stranger@example.org"))
        .collect();
    assert_eq!(strangers.len(), 1, "{strangers:?}");
    assert!(strangers[0].contains("Confirm your address"));

    // The producer sees the same over REST; the refused address is unreachable (R6).
    let (status, message) = system
        .call(
            "GET",
            &format!("/api/messaging/messages/{message_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(message["status"], "completed", "{message}");
    let deliveries = message["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().any(|d| d["status"] == "sent"));
    assert!(
        deliveries
            .iter()
            .any(|d| d["status"] == "failed" && d["failure"]["class"] == "permanent")
    );
    let (_, ann) = system.call("GET", "/api/messaging/users/ann", None).await;
    let refused = ann["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == "nosuchuser@example.org")
        .unwrap()
        .clone();
    assert_eq!(refused["state"], "unreachable", "{ann}");

    system.finish().await;
}

/// The first mail to `to` whose text contains `containing`, once the sink has it.
async fn wait_for_mail(
    sink: &herald_testkit::smtp::SmtpSink,
    to: &str,
    containing: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(mail) = sink
            .messages()
            .into_iter()
            .find(|m| m.contains(to) && m.contains(containing))
        {
            return mail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no mail to {to} with {containing:?}: {:?}",
            sink.messages()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
