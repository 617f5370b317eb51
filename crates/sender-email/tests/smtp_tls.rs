//! The email sender against a relay that speaks TLS and wants a login, as real ones do:
//! aiosmtpd with STARTTLS or implicit TLS, a required AUTH, and a certificate from a
//! throwaway CA made for each test. Driven through the runtime and the real broker, like
//! `email_sender.rs`.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use herald_runtime::config::Secret;
use herald_testkit::smtp::{SinkOptions, SinkTlsMode, SmtpSink, TestCertificates};
use messaging_core::Address;
use messaging_core::events::{AttemptResult, DeliveryEvent};
use messaging_core::failure::{Failure, FailureClass};
use messaging_core::values::Email;
use sender_email::{EmailConfig, EmailSender, SmtpSettings, TlsMode};
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_runtime::{BuildError, Built, ChannelSender};

const WAIT: Duration = Duration::from_secs(20);
const USER: &str = "herald";
const PASSWORD: &str = "correct horse battery staple";

/// A sink with this certificate's TLS in `mode` that wants `USER` / `PASSWORD`.
async fn relay(certs: &TestCertificates, mode: SinkTlsMode) -> SmtpSink {
    SmtpSink::start_with(SinkOptions {
        tls: Some(certs.sink_tls(mode)),
        auth: Some((USER.into(), PASSWORD.into())),
    })
    .await
}

fn config(port: u16, tls: TlsMode, ca_file: Option<PathBuf>, password: &str) -> EmailConfig {
    EmailConfig {
        smtp: SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            tls,
            tls_ca_file: ca_file,
            username: Some(USER.into()),
            password: Secret::new(password.to_owned()),
            from: "Herald <noreply@herald.test>".into(),
            timeout_ms: 3_000,
            ..SmtpSettings::default()
        },
    }
}

fn email(address: &str) -> Address {
    Address::Email(Email::parse(address).unwrap())
}

/// Sends one mail and returns its first attempt.
async fn first_attempt(test: &str, config: EmailConfig) -> DeliveryEvent {
    let h = SenderHarness::start::<EmailSender>(test, quick_config(), config).await;
    let job = h.job(email("ann@example.org"), "Your order has shipped.");
    h.publish(&job).await;
    let event = h.next_event(WAIT).await.expect("an event");
    assert_eq!(event.delivery_id, job.delivery_id);
    h.stop().await;
    event
}

/// The failure of an attempt the runtime will retry because the relay is unusable.
fn unhealthy(event: &DeliveryEvent) -> &Failure {
    let AttemptResult::RetryScheduled { failure, .. } = &event.result else {
        panic!("expected a retry after an unhealthy failure: {event:?}")
    };
    assert_eq!(failure.class, FailureClass::Unhealthy, "{failure:?}");
    failure
}

fn assert_delivered_over_tls_as_user(event: &DeliveryEvent, sink: &SmtpSink) {
    assert!(
        matches!(event.result, AttemptResult::Delivered { .. }),
        "{event:?}"
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    // The sink stamps how the mail came: over which TLS version, logged in as whom.
    for expected in [
        "X-Sink-TLS: TLSv1.",
        &format!("X-Sink-Auth: {USER}"),
        "To: ann@example.org",
        "Your order has shipped.",
    ] {
        assert!(mail.contains(expected), "missing {expected:?} in:\n{mail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_a_login_with_the_private_ca_deliver_the_mail() {
    let certs = TestCertificates::generate();
    let sink = relay(&certs, SinkTlsMode::Starttls).await;
    let event = first_attempt(
        "email_tls_starttls",
        config(
            sink.port(),
            TlsMode::Starttls,
            Some(certs.ca_cert()),
            PASSWORD,
        ),
    )
    .await;
    assert_delivered_over_tls_as_user(&event, &sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_and_a_login_with_the_private_ca_deliver_the_mail() {
    let certs = TestCertificates::generate();
    let sink = relay(&certs, SinkTlsMode::Implicit).await;
    let event = first_attempt(
        "email_tls_implicit",
        config(sink.port(), TlsMode::Tls, Some(certs.ca_cert()), PASSWORD),
    )
    .await;
    assert_delivered_over_tls_as_user(&event, &sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_unhealthy_smtp_auth_failure_and_nothing_arrives() {
    let certs = TestCertificates::generate();
    let sink = relay(&certs, SinkTlsMode::Starttls).await;
    let event = first_attempt(
        "email_tls_bad_password",
        config(
            sink.port(),
            TlsMode::Starttls,
            Some(certs.ca_cert()),
            "wrong",
        ),
    )
    .await;
    let failure = unhealthy(&event);
    assert_eq!(failure.code, "smtp_auth");
    assert!(failure.message.contains("535"), "{}", failure.message);
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_a_ca_the_sender_does_not_trust_is_refused_and_nothing_arrives() {
    let certs = TestCertificates::generate();
    let sink = relay(&certs, SinkTlsMode::Starttls).await;
    // Trusts an unrelated private CA (and the public roots), not the one that signed.
    let event = first_attempt(
        "email_tls_other_ca",
        config(
            sink.port(),
            TlsMode::Starttls,
            Some(certs.other_ca_cert()),
            PASSWORD,
        ),
    )
    .await;
    let failure = unhealthy(&event);
    assert_eq!(failure.code, "smtp_unavailable");
    assert!(
        failure.message.contains("UnknownIssuer"),
        "a certificate error: {}",
        failure.message
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_only_the_public_roots_refuses_a_private_certificate() {
    let certs = TestCertificates::generate();
    let sink = relay(&certs, SinkTlsMode::Implicit).await;
    let event = first_attempt(
        "email_tls_no_ca",
        config(sink.port(), TlsMode::Tls, None, PASSWORD),
    )
    .await;
    let failure = unhealthy(&event);
    assert_eq!(failure.code, "smtp_unavailable");
    assert!(
        failure.message.contains("UnknownIssuer"),
        "a certificate error: {}",
        failure.message
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starttls_sender_refuses_a_server_without_starttls_and_sends_nothing() {
    // Plain SMTP only: it would take the mail (and the login) in clear text.
    let sink = SmtpSink::start().await;
    let event = first_attempt(
        "email_tls_no_starttls",
        config(sink.port(), TlsMode::Starttls, None, PASSWORD),
    )
    .await;
    let failure = unhealthy(&event);
    assert_eq!(failure.code, "smtp_unavailable");
    assert!(failure.message.contains("STARTTLS"), "{}", failure.message);
    assert!(sink.messages().is_empty());
}

async fn build_error(config: EmailConfig) -> BuildError {
    match EmailSender::build(config).await {
        Err(error) => error,
        Ok(_) => panic!("the sender was built"),
    }
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_stops_the_sender() {
    let certs = TestCertificates::generate();
    let missing = certs.ca_cert().with_file_name("missing.pem");
    let error = build_error(config(465, TlsMode::Tls, Some(missing.clone()), PASSWORD)).await;
    assert!(
        error.reason.contains("HERALD_SMTP__TLS_CA_FILE")
            && error.reason.contains(&missing.display().to_string())
            && error.reason.contains("cannot be read"),
        "{}",
        error.reason
    );

    // A private key where the CA certificate belongs: an easy mistake to make.
    let error = build_error(config(
        465,
        TlsMode::Tls,
        Some(certs.server_key()),
        PASSWORD,
    ))
    .await;
    assert!(
        error.reason.contains("HERALD_SMTP__TLS_CA_FILE")
            && error.reason.contains("holds no PEM certificate"),
        "{}",
        error.reason
    );
}

#[tokio::test]
async fn an_empty_ca_file_setting_means_none() {
    // Compose passes an unset HERALD_SMTP__TLS_CA_FILE as an empty string.
    let built = EmailSender::build(config(465, TlsMode::Tls, Some(PathBuf::new()), PASSWORD))
        .await
        .unwrap();
    assert!(matches!(built, Built::Ready(_)));
}
