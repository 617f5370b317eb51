//! Fan-out against the real PostgreSQL and RabbitMQ: requests become delivery rows and send
//! jobs, exactly once per address, with the failures a producer must learn recorded.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use fanout_router::config::LegacyDestination;
use herald_runtime::amqp::Outcome;
use herald_storage::messages::{self, NewMessage};
use messaging_core::Channel;
use messaging_core::values::{TenantKey, UserId};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::Harness;
use uuid::Uuid;

fn notify_users(users: &[&str], key: Option<&str>) -> Value {
    let mut body = json!({
        "version": 1, "kind": "notify", "tenant": "acme",
        "to": {"users": users},
        "content": {"direct": {"subject": "Hi", "body": "Hello there"}}
    });
    if let Some(key) = key {
        body["idempotencyKey"] = json!(key);
    }
    body
}

fn trigger(subscription: &str, data: Value, locale: Option<&str>) -> Value {
    let mut template = json!({"data": data});
    if let Some(locale) = locale {
        template["locale"] = json!(locale);
    }
    json!({
        "version": 1, "kind": "notify", "tenant": "acme",
        "to": {"subscription": subscription},
        "content": {"template": template}
    })
}

async fn ann_with_three_addresses(h: &Harness) -> Uuid {
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    h.address(ann, "sms", "+41791234567").await;
    h.address(ann, "telegram", "4242").await;
    ann
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_direct_message_to_a_user_with_three_addresses_makes_three_jobs_on_their_channels(
    pool: PgPool,
) {
    let h = Harness::new(pool, "direct_three").await;
    ann_with_three_addresses(&h).await;

    let outcome = h.handle(&notify_users(&["ann"], Some("k-1")), None).await;
    assert_eq!(outcome, Outcome::Ack);

    let (message_id, status, error, source) = h.message().await;
    assert_eq!(
        (status.as_str(), error, source.as_str()),
        ("fanned_out", None, "amqp")
    );
    let rows = h.deliveries(message_id).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.3 == "pending" && r.6), "{rows:?}");

    for (channel, address) in [
        (Channel::Email, "ann@example.org"),
        (Channel::Sms, "+41791234567"),
        (Channel::Telegram, "4242"),
    ] {
        let jobs = h.jobs(channel).await;
        assert_eq!(jobs.len(), 1, "{channel}: {jobs:?}");
        let job = &jobs[0];
        assert_eq!(job.to.value(), address);
        assert_eq!(job.message_id, message_id);
        assert_eq!(job.user_id, Some(UserId::parse("ann").unwrap()));
        assert_eq!(job.tenant, TenantKey::parse("acme").unwrap());
        assert_eq!(job.content.subject.as_deref(), Some("Hi"));
        assert_eq!(job.content.text, "Hello there");
        assert!(
            rows.iter().any(|r| r.0 == job.delivery_id),
            "job id is the row id"
        );
    }
    assert!(h.jobs(Channel::Discord).await.is_empty());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn preferred_mode_sends_only_on_the_preferred_channel(pool: PgPool) {
    let h = Harness::new(pool, "preferred").await;
    let bob = h.user("bob", None, Some("sms"), "preferred").await;
    h.address(bob, "email", "bob@example.org").await;
    h.address(bob, "sms", "+41791234568").await;

    assert_eq!(
        h.handle(&notify_users(&["bob"], None), None).await,
        Outcome::Ack
    );
    assert_eq!(h.jobs(Channel::Sms).await.len(), 1);
    assert!(h.jobs(Channel::Email).await.is_empty());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_subscription_trigger_renders_each_recipients_locale_with_fallback(pool: PgPool) {
    let h = Harness::new(pool, "locales").await;
    let orders = h.subscription("orders", "en").await;
    h.template(
        orders,
        None,
        "en",
        Some("Order {{ order }}"),
        "Order {{ order }} shipped",
    )
    .await;
    h.template(
        orders,
        None,
        "de",
        Some("Bestellung {{ order }}"),
        "Bestellung {{ order }} versandt",
    )
    .await;
    h.template(orders, Some("sms"), "de", None, "SMS: {{ order }} versandt")
        .await;
    let people = [
        ("de-ch", Some("de-CH"), "email"),
        ("de-sms", Some("de"), "sms"),
        ("french", Some("fr"), "email"),
        ("nobody-knows", None, "email"),
    ];
    for (name, locale, channel) in people {
        let user = h.user(name, locale, None, "all").await;
        let address = if channel == "sms" {
            "+41790000001".to_owned()
        } else {
            format!("{name}@example.org")
        };
        h.register(orders, user, channel, &address).await;
    }

    let outcome = h
        .handle(&trigger("orders", json!({"order": 1001}), None), None)
        .await;
    assert_eq!(outcome, Outcome::Ack);

    let mut emails: Vec<(String, String, Option<String>)> = h
        .jobs(Channel::Email)
        .await
        .into_iter()
        .map(|j| (j.to.value(), j.content.text, j.content.subject))
        .collect();
    emails.sort();
    assert_eq!(
        emails,
        [
            (
                "de-ch@example.org".into(),
                "Bestellung 1001 versandt".into(),
                Some("Bestellung 1001".into())
            ),
            (
                "french@example.org".into(),
                "Order 1001 shipped".into(),
                Some("Order 1001".into())
            ),
            (
                "nobody-knows@example.org".into(),
                "Order 1001 shipped".into(),
                Some("Order 1001".into())
            ),
        ]
    );
    let sms = h.jobs(Channel::Sms).await;
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].content.text, "SMS: 1001 versandt");

    // The request's locale overrides everyone's own.
    let outcome = h
        .handle(&trigger("orders", json!({"order": 1002}), Some("de")), None)
        .await;
    assert_eq!(outcome, Outcome::Ack);
    let texts: HashSet<String> = h
        .jobs(Channel::Email)
        .await
        .into_iter()
        .map(|j| j.content.text)
        .collect();
    assert_eq!(
        texts,
        HashSet::from(["Bestellung 1002 versandt".to_owned()])
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_template_error_fails_only_the_recipients_who_get_that_template(pool: PgPool) {
    let h = Harness::new(pool, "template_error").await;
    let alerts = h.subscription("alerts", "en").await;
    h.template(alerts, None, "en", None, "Alert {{ level }}")
        .await;
    h.template(alerts, Some("sms"), "en", None, "{{ missing_value }}")
        .await;
    let ann = h.user("ann", None, None, "all").await;
    h.register(alerts, ann, "email", "ann@example.org").await;
    h.register(alerts, ann, "sms", "+41791234567").await;

    let outcome = h
        .handle(&trigger("alerts", json!({"level": "red"}), None), None)
        .await;
    assert_eq!(outcome, Outcome::Ack);
    let (message_id, status, _, _) = h.message().await;
    assert_eq!(status, "fanned_out");
    let rows = h.deliveries(message_id).await;
    let sms = rows.iter().find(|r| r.1.as_deref() == Some("sms")).unwrap();
    assert_eq!(
        (sms.3.as_str(), sms.4.as_deref(), sms.5.as_deref()),
        ("failed", Some("permanent"), Some("template_error"))
    );
    assert_eq!(h.jobs(Channel::Email).await[0].content.text, "Alert red");
    assert!(h.jobs(Channel::Sms).await.is_empty());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_subscription_without_templates_fails_the_message_with_no_template_and_publishes_nothing(
    pool: PgPool,
) {
    let h = Harness::new(pool, "no_template").await;
    let news = h.subscription("news", "en").await;
    let ann = h.user("ann", None, None, "all").await;
    h.register(news, ann, "email", "ann@example.org").await;

    let outcome = h.handle(&trigger("news", json!({}), None), None).await;
    assert_eq!(outcome, Outcome::Ack);
    let (message_id, status, error, _) = h.message().await;
    assert_eq!(
        (status.as_str(), error.as_deref()),
        ("failed", Some("no_template"))
    );
    let stored = messages::by_id(&h.pool, h.tenant_id, message_id)
        .await
        .unwrap();
    assert!(
        stored.error_message.unwrap().contains("has no template"),
        "a clear error message"
    );
    assert!(h.deliveries(message_id).await.is_empty());
    assert!(h.all_jobs().await.is_empty());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn unknown_and_disabled_subscriptions_fail_the_message_with_their_reason(pool: PgPool) {
    let h = Harness::new(pool, "unknown_subscription").await;
    assert_eq!(
        h.handle(&trigger("nothing_here", json!({}), None), None)
            .await,
        Outcome::Ack
    );
    let paused = h.subscription("paused", "en").await;
    sqlx::query("UPDATE subscriptions SET enabled = false WHERE id = $1")
        .bind(paused)
        .execute(&h.pool)
        .await
        .unwrap();
    assert_eq!(
        h.handle(&trigger("paused", json!({}), None), None).await,
        Outcome::Ack
    );
    let codes: Vec<(String, Option<String>)> =
        h.messages().await.into_iter().map(|m| (m.1, m.2)).collect();
    assert_eq!(
        codes,
        [
            ("failed".into(), Some("unknown_subscription".into())),
            ("failed".into(), Some("subscription_disabled".into()))
        ]
    );
    assert!(h.all_jobs().await.is_empty());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unknown_tenant_is_dead_lettered(pool: PgPool) {
    let h = Harness::new(pool, "unknown_tenant").await;
    let mut body = notify_users(&["ann"], None);
    body["tenant"] = json!("globex");
    let Outcome::DeadLetter(rejection) = h.handle(&body, None).await else {
        panic!("dead letter expected")
    };
    assert_eq!(rejection.code, "unknown_tenant");
    assert!(rejection.reason.contains("globex"));
    h.finish().await;
}

/// The outcome goes to `reply_to` through the default exchange, which reaches any queue by
/// name: only the tenant's own reply queues are taken.
#[sqlx::test(migrations = "../../migrations")]
async fn a_reply_to_outside_the_tenants_reply_queues_is_dead_lettered(pool: PgPool) {
    let h = Harness::new(pool, "reply_to").await;
    let body = notify_users(&["ann"], None);
    for queue in [
        h.names.send_queue(Channel::Email),
        format!("{}orders", h.names.reply_queue_prefix("globex")),
        h.names.reply_queue_prefix("acme"),
    ] {
        let mut ctx = support::context(None);
        ctx.reply_to = Some(queue.clone());
        let Outcome::DeadLetter(rejection) = h.handle_in(&body, ctx).await else {
            panic!("dead letter expected for {queue}")
        };
        assert_eq!(rejection.code, "reply_to_not_allowed", "{queue}");
    }
    let mut ctx = support::context(None);
    ctx.reply_to = Some(format!("{}orders", h.names.reply_queue_prefix("acme")));
    assert_eq!(h.handle_in(&body, ctx).await, Outcome::Ack);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_user_without_an_address_gets_a_failed_no_address_delivery(pool: PgPool) {
    let h = Harness::new(pool, "no_address").await;
    h.user("ghost", None, None, "all").await;
    ann_with_three_addresses(&h).await;

    // `never-seen` is not known at all: it is recorded the same way.
    let outcome = h
        .handle(&notify_users(&["ghost", "never-seen", "ann"], None), None)
        .await;
    assert_eq!(outcome, Outcome::Ack);
    let (message_id, status, _, _) = h.message().await;
    assert_eq!(status, "fanned_out");
    let failed: Vec<(Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT u.external_id, d.channel, d.failure_code FROM deliveries d JOIN users u ON u.id = d.user_id
         WHERE d.message_id = $1 AND d.status = 'failed' AND d.failure_class = 'permanent' ORDER BY u.external_id",
    )
    .bind(message_id)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        failed,
        [
            (Some("ghost".into()), None, "no_address".into()),
            (Some("never-seen".into()), None, "no_address".into())
        ]
    );
    assert_eq!(h.all_jobs().await.len(), 3);

    // Only people without any address: nothing is pending, so the message is complete.
    assert_eq!(
        h.handle(&notify_users(&["ghost"], None), None).await,
        Outcome::Ack
    );
    let last = h.messages().await.pop().unwrap();
    assert_eq!(last.1, "completed");
    h.finish().await;
}

/// Issue #17: the router sends nothing to an address nobody proved, nor to a registration
/// that names no address of the person's, whether the request names the person or the
/// subscription.
#[sqlx::test(migrations = "../../migrations")]
async fn unproven_addresses_and_registrations_without_a_proven_address_get_nothing(pool: PgPool) {
    let h = Harness::new(pool, "unproven").await;
    let mallory = h.user("mallory", None, None, "all").await;
    h.unproven_address(mallory, "email", "victim@example.org")
        .await;
    h.unproven_address(mallory, "sms", "+41790000000").await;
    h.address(mallory, "email", "mallory@example.org").await;

    assert_eq!(
        h.handle(&notify_users(&["mallory"], None), None).await,
        Outcome::Ack
    );
    let jobs = h.all_jobs().await;
    assert_eq!(
        jobs.iter().map(|j| j.to.value()).collect::<Vec<_>>(),
        ["mallory@example.org"],
        "only the proven address"
    );

    // Only unproven addresses: a failed `no_address` delivery, nothing sent.
    let eve = h.user("eve", None, None, "all").await;
    h.unproven_address(eve, "email", "someone@example.org")
        .await;
    assert_eq!(
        h.handle(&notify_users(&["eve"], None), None).await,
        Outcome::Ack
    );
    assert!(h.all_jobs().await.is_empty());
    let last = h.messages().await.pop().unwrap();
    let rows = h.deliveries(last.0).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3, "failed");

    // Registrations: one naming an unproven address, one naming no address row at all, one
    // naming a proven address.
    let news = h.subscription("news", "en").await;
    h.template(news, None, "en", Some("News"), "Hello").await;
    h.register_only(news, mallory, "email", "victim@example.org")
        .await;
    h.register_only(news, eve, "sms", "+41791111111").await;
    h.register_only(news, mallory, "email", "mallory@example.org")
        .await;
    assert_eq!(
        h.handle(&trigger("news", json!({}), None), None).await,
        Outcome::Ack
    );
    let jobs = h.all_jobs().await;
    assert_eq!(
        jobs.iter().map(|j| j.to.value()).collect::<Vec<_>>(),
        ["mallory@example.org"]
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_repeated_idempotency_key_makes_no_second_job(pool: PgPool) {
    let h = Harness::new(pool, "idempotency").await;
    ann_with_three_addresses(&h).await;
    let body = notify_users(&["ann"], Some("order-7"));

    assert_eq!(h.handle(&body, Some("first-publish")).await, Outcome::Ack);
    assert_eq!(h.all_jobs().await.len(), 3);
    // The producer sends the same request again, as a new AMQP message.
    assert_eq!(h.handle(&body, Some("second-publish")).await, Outcome::Ack);
    assert_eq!(h.handle(&body, None).await, Outcome::Ack);
    assert!(h.all_jobs().await.is_empty(), "no second job");
    let (message_id, _, _, _) = h.message().await;
    assert_eq!(h.deliveries(message_id).await.len(), 3);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_request_publishes_only_jobs_not_yet_published(pool: PgPool) {
    let h = Harness::new(pool, "redelivery").await;
    ann_with_three_addresses(&h).await;
    // No idempotency key: only the AMQP message id tells the redelivery apart.
    let body = notify_users(&["ann"], None);
    let amqp_id = "producer-message-17";

    assert_eq!(h.handle(&body, Some(amqp_id)).await, Outcome::Ack);
    let first = h.all_jobs().await;
    assert_eq!(first.len(), 3);

    // Redelivered after the work was done but before the ack reached the broker.
    assert_eq!(h.handle(&body, Some(amqp_id)).await, Outcome::Ack);
    assert!(h.all_jobs().await.is_empty());

    // Now the crash came earlier: one job was confirmed but not yet marked, and the message
    // was not finished. The next pass publishes that one job again, with the same delivery
    // id (senders drop the repeat), and nothing else.
    let (message_id, _, _, _) = h.message().await;
    let email = h
        .deliveries(message_id)
        .await
        .into_iter()
        .find(|r| r.1.as_deref() == Some("email"))
        .unwrap();
    sqlx::query("UPDATE deliveries SET job_published_at = NULL WHERE id = $1")
        .bind(email.0)
        .execute(&h.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET status = 'accepted' WHERE id = $1")
        .bind(message_id)
        .execute(&h.pool)
        .await
        .unwrap();
    assert_eq!(h.handle(&body, Some(amqp_id)).await, Outcome::Ack);
    let again = h.all_jobs().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].delivery_id, email.0);
    assert_eq!(h.deliveries(message_id).await.len(), 3);
    assert_eq!(h.message().await.1, "fanned_out");
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_message_stored_by_the_api_is_fanned_out_under_its_own_id(pool: PgPool) {
    let h = Harness::new(pool, "api_row").await;
    ann_with_three_addresses(&h).await;
    let body = notify_users(&["ann"], Some("api-key-1"));
    let mut tx = h.pool.begin().await.unwrap();
    let (stored, _) = messages::accept(
        &mut tx,
        NewMessage {
            tenant_id: h.tenant_id,
            idempotency_key: Some("api-key-1"),
            source: messaging_core::MessageSource::Api,
            subscription_id: None,
            request: &body,
            exchange: &h.names.ingress_exchange(),
            routing_key: "api",
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let outcome = h.handle(&body, Some(&stored.id.to_string())).await;
    assert_eq!(outcome, Outcome::Ack);
    let (id, status, _, source) = h.message().await;
    assert_eq!(
        (id, status.as_str(), source.as_str()),
        (stored.id, "fanned_out", "api")
    );
    let jobs = h.all_jobs().await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.message_id == stored.id));
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_producers_uuid_message_id_becomes_the_message_id(pool: PgPool) {
    let h = Harness::new(pool, "uuid_id").await;
    ann_with_three_addresses(&h).await;
    let id = Uuid::now_v7();
    let outcome = h
        .handle(&notify_users(&["ann"], None), Some(&id.to_string()))
        .await;
    assert_eq!(outcome, Outcome::Ack);
    assert_eq!(h.message().await.0, id);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_legacy_message_goes_to_the_default_destination_on_its_channel(pool: PgPool) {
    let legacy = LegacyDestination {
        tenant: TenantKey::parse("acme").unwrap(),
        user: UserId::parse("ops-room").unwrap(),
    };
    let h = Harness::with(pool, "legacy", 1000, Some(legacy)).await;
    let ops = h.user("ops-room", None, None, "all").await;
    h.address(ops, "telegram", "-100123").await;
    h.address(ops, "email", "ops@example.org").await;

    let body = json!({"title": "Backup", "body": "done", "sender": "TG"});
    assert_eq!(h.handle(&body, Some("legacy-1")).await, Outcome::Ack);
    let jobs = h.jobs(Channel::Telegram).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].content.text, "done");
    assert_eq!(jobs[0].content.subject.as_deref(), Some("Backup"));
    assert!(
        h.jobs(Channel::Email).await.is_empty(),
        "only the legacy channel"
    );
    assert_eq!(h.message().await.3, "legacy");
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_legacy_message_without_a_configured_destination_is_dead_lettered(pool: PgPool) {
    let h = Harness::new(pool, "legacy_unset").await;
    let body = json!({"body": "done", "sender": "EMAIL"});
    let Outcome::DeadLetter(rejection) = h.handle(&body, None).await else {
        panic!("dead letter expected")
    };
    assert_eq!(rejection.code, "legacy_not_configured");
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_event_fires_each_bound_subscription_once(pool: PgPool) {
    let h = Harness::new(pool, "event").await;
    let ann = h.user("ann", None, None, "all").await;
    for key in ["login_alerts", "audit_log"] {
        let subscription = h.subscription(key, "en").await;
        h.template(
            subscription,
            None,
            "en",
            None,
            &format!("{key}: {{{{ user }}}} logged in"),
        )
        .await;
        h.register(subscription, ann, "email", "ann@example.org")
            .await;
        sqlx::query(
            "INSERT INTO event_bindings (id, tenant_id, event_type, subscription_id) VALUES ($1, $2, 'audit.login', $3)",
        )
        .bind(Uuid::now_v7())
        .bind(h.tenant_id)
        .bind(subscription)
        .execute(&h.pool)
        .await
        .unwrap();
    }
    let event = json!({
        "version": 1, "kind": "event", "tenant": "acme", "eventType": "audit.login",
        "idempotencyKey": "login-99", "data": {"user": "ann"}
    });
    assert_eq!(h.handle(&event, Some("event-1")).await, Outcome::Ack);
    let mut texts: Vec<String> = h
        .jobs(Channel::Email)
        .await
        .into_iter()
        .map(|j| j.content.text)
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        ["audit_log: ann logged in", "login_alerts: ann logged in"]
    );
    let sources: Vec<String> = h.messages().await.into_iter().map(|m| m.3).collect();
    assert_eq!(sources, ["event", "event"]);

    // The same event again is a repeat for both subscriptions.
    assert_eq!(h.handle(&event, Some("event-2")).await, Outcome::Ack);
    assert!(h.all_jobs().await.is_empty());

    // An event nobody is bound to is fine, and does nothing.
    let other =
        json!({"version": 1, "kind": "event", "tenant": "acme", "eventType": "audit.logout"});
    assert_eq!(h.handle(&other, None).await, Outcome::Ack);
    assert_eq!(h.messages().await.len(), 2);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn five_thousand_registrations_fan_out_in_batches_with_every_job_published_once(
    pool: PgPool,
) {
    // A batch size that does not divide the audience, so the last page is a partial one.
    let h = Harness::with(pool, "five_thousand", 700, None).await;
    let big = h.subscription("big_news", "en").await;
    h.template(big, None, "en", Some("News"), "Hello {{ name }}")
        .await;
    h.email_registrations(big, 5000).await;

    let outcome = h
        .handle(
            &trigger("big_news", json!({"name": "all"}), None),
            Some("big-1"),
        )
        .await;
    assert_eq!(outcome, Outcome::Ack);

    // Issue #16: the jobs travel in bundles of up to 100, each batch's on its own (8
    // batches, the last of 100 jobs): 50 messages for 5,000 jobs.
    let queue = h.names.send_queue(Channel::Email);
    let mut jobs = Vec::new();
    let mut messages = 0;
    while let Some(message) = h.inspector.get(&queue).await {
        messages += 1;
        let kind = message.delivery.properties.kind().clone();
        assert_eq!(
            kind.as_ref().map(|k| k.as_str()),
            Some(messaging_core::job::SendJobBundle::KIND)
        );
        let bundle: messaging_core::job::SendJobBundle =
            serde_json::from_slice(&message.delivery.data).unwrap();
        assert!(bundle.jobs.len() <= 100);
        jobs.extend(bundle.jobs);
    }
    assert_eq!(
        messages, 50,
        "7 batches of 700 in 7 bundles each, one of 100"
    );
    assert_eq!(jobs.len(), 5000);
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!(ids.len(), 5000, "every delivery once");
    let addresses: HashSet<String> = jobs.iter().map(|j| j.to.value()).collect();
    assert_eq!(addresses.len(), 5000, "every address once");
    let (message_id, status, _, _) = h.message().await;
    assert_eq!(status, "fanned_out");
    let (rows, published): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(job_published_at) FROM deliveries WHERE message_id = $1 AND status = 'pending'",
    )
    .bind(message_id)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!((rows, published), (5000, 5000));

    // Handled again (a redelivery): nothing more.
    assert_eq!(
        h.handle(
            &trigger("big_news", json!({"name": "all"}), None),
            Some("big-1")
        )
        .await,
        Outcome::Ack
    );
    assert!(h.jobs(Channel::Email).await.is_empty());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_second_request_with_a_key_in_flight_does_not_join_the_first_ones_fan_out(pool: PgPool) {
    let h = Harness::new(pool, "key_in_flight").await;
    ann_with_three_addresses(&h).await;
    h.user("bob", None, None, "all").await;
    // The first request with key k-9 is stored and still waiting for a retry (accepted).
    let first = notify_users(&["ann"], Some("k-9"));
    let mut conn = h.pool.acquire().await.unwrap();
    let (stored, _) = herald_storage::messages::insert_or_find(
        &mut conn,
        herald_storage::messages::NewRouterMessage {
            id: Uuid::now_v7(),
            tenant_id: h.tenant_id,
            idempotency_key: Some("k-9"),
            source: messaging_core::MessageSource::Amqp,
            subscription_id: None,
            request: &first,
            reply_to: None,
            correlation_id: None,
        },
    )
    .await
    .unwrap();
    drop(conn);
    // Another request reuses the key with other recipients: it is a repeat, and must not fan
    // its own recipients out under the first message.
    let second = notify_users(&["bob"], Some("k-9"));
    assert_eq!(
        h.handle(&second, Some("another-publish")).await,
        Outcome::Ack
    );
    assert!(h.all_jobs().await.is_empty());
    let deliveries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE message_id = $1")
            .bind(stored.id)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(deliveries, 0);
    // The first request's own redelivery still fans out.
    assert_eq!(
        h.handle(&first, Some(&stored.id.to_string())).await,
        Outcome::Ack
    );
    assert_eq!(h.all_jobs().await.len(), 3);
    h.finish().await;
}

/// A subscription with a template and `n` email registrations.
async fn news_with_registrations(h: &Harness, n: usize) -> Uuid {
    let news = h.subscription("news", "en").await;
    h.template(news, None, "en", Some("News"), "Hello {{ name }}")
        .await;
    h.email_registrations(news, n as i64).await;
    news
}

#[sqlx::test(migrations = "../../migrations")]
async fn two_copies_of_a_request_in_work_at_once_fan_out_once(pool: PgPool) {
    let h = Harness::with(pool, "two_copies", 100, None).await;
    news_with_registrations(&h, 1500).await;
    let body = trigger("news", json!({"name": "all"}), None);
    let id = Uuid::now_v7().to_string();

    // While another pass holds the message, a copy waits (without spending an attempt) and
    // publishes nothing.
    let (held, _) = herald_storage::lease::try_lease(&h.pool, id.parse().unwrap())
        .await
        .unwrap()
        .expect("the lease is free");
    let outcome = h.handle(&body, Some(&id)).await;
    assert!(matches!(outcome, Outcome::Defer { .. }), "{outcome:?}");
    assert!(h.jobs(Channel::Email).await.is_empty());
    assert_eq!(h.message().await.1, "accepted");
    held.release().await.unwrap();

    // Two copies at once, as two consumer slots (or two routers) would run them.
    let (a, b) = tokio::join!(h.handle(&body, Some(&id)), h.handle(&body, Some(&id)));
    let outcomes = [a, b];
    assert!(outcomes.contains(&Outcome::Ack), "{outcomes:?}");
    for outcome in outcomes {
        if outcome != Outcome::Ack {
            assert!(matches!(outcome, Outcome::Defer { .. }), "{outcome:?}");
            // The deferred copy comes back and finds the message done.
            assert_eq!(h.handle(&body, Some(&id)).await, Outcome::Ack);
        }
    }
    let jobs = h.jobs(Channel::Email).await;
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!((jobs.len(), ids.len()), (1500, 1500), "each job once");
    assert_eq!(h.message().await.1, "fanned_out");
    h.finish().await;
}

/// Issue #18: the lease's session ends while the pass works (a network cut, the server
/// ending it). Its lock is gone, so a copy of the request could take over; the pass must stop
/// publishing instead of sending what the other pass sends too.
#[sqlx::test(migrations = "../../migrations")]
async fn a_pass_that_loses_its_lease_stops_publishing(pool: PgPool) {
    let h = Harness::with(pool, "lease_lost", 100, None).await;
    news_with_registrations(&h, 5000).await;
    let body = trigger("news", json!({"name": "all"}), None);
    let id = Uuid::now_v7().to_string();

    // As soon as the first jobs are out, the session holding the lease is ended.
    let killer = {
        let pool = h.pool.clone();
        let message_id: Uuid = id.parse().unwrap();
        tokio::spawn(async move {
            loop {
                let published: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM deliveries
                      WHERE message_id = $1 AND job_published_at IS NOT NULL",
                )
                .bind(message_id)
                .fetch_one(&pool)
                .await
                .unwrap();
                if published > 0 {
                    let ended: Vec<bool> = sqlx::query_scalar(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks
                          WHERE locktype = 'advisory' AND granted AND database =
                                (SELECT oid FROM pg_database WHERE datname = current_database())",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    return ended;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let outcome = h.handle(&body, Some(&id)).await;
    let ended = killer.await.unwrap();
    assert_eq!(ended, [true], "the lease's session was ended");
    assert_ne!(outcome, Outcome::Ack, "the pass stopped");
    let published_first = h.jobs(Channel::Email).await;
    assert!(
        published_first.len() < 5000,
        "stopped before the end: {} of 5000",
        published_first.len()
    );

    // The request comes back and finishes: each job once over both passes.
    assert_eq!(h.handle(&body, Some(&id)).await, Outcome::Ack);
    let mut jobs = published_first;
    jobs.extend(h.jobs(Channel::Email).await);
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!((jobs.len(), ids.len()), (5000, 5000), "each job once");
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_refusal_after_a_partial_fan_out_fails_only_what_was_not_published(pool: PgPool) {
    let h = Harness::new(pool, "partial_refusal").await;
    let news = news_with_registrations(&h, 3).await;
    let body = trigger("news", json!({"name": "all"}), None);
    assert_eq!(h.handle(&body, Some("partial-1")).await, Outcome::Ack);
    assert_eq!(h.jobs(Channel::Email).await.len(), 3);
    // The first pass died after publishing two of the three jobs; then an admin disabled the
    // subscription, and the request came back.
    let (message_id, _, _, _) = h.message().await;
    let unpublished = h.deliveries(message_id).await[0].0;
    sqlx::query("UPDATE deliveries SET job_published_at = NULL WHERE id = $1")
        .bind(unpublished)
        .execute(&h.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET status = 'accepted' WHERE id = $1")
        .bind(message_id)
        .execute(&h.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE subscriptions SET enabled = false WHERE id = $1")
        .bind(news)
        .execute(&h.pool)
        .await
        .unwrap();

    assert_eq!(h.handle(&body, Some("partial-1")).await, Outcome::Ack);
    assert!(h.jobs(Channel::Email).await.is_empty());
    // The two jobs that went out are still on their way; the message is not failed under
    // them, but says why the third never went out.
    let (_, status, error_code, _) = h.message().await;
    assert_eq!(
        (status.as_str(), error_code.as_deref()),
        ("fanned_out", Some("subscription_disabled"))
    );
    let rows = h.deliveries(message_id).await;
    let failed: Vec<_> = rows.iter().filter(|r| r.3 == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, unpublished);
    assert_eq!(failed[0].5.as_deref(), Some("subscription_disabled"));
    assert_eq!(rows.iter().filter(|r| r.3 == "pending").count(), 2);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_last_attempt_records_the_give_up_on_the_message(pool: PgPool) {
    use herald_runtime::amqp::Handler;
    let h = Harness::new(pool, "give_up").await;
    ann_with_three_addresses(&h).await;
    // Email jobs cannot be routed: every attempt fails (as with a broker that refuses them).
    h.inspector
        .channel()
        .queue_unbind(
            h.names.send_queue(Channel::Email).as_str().into(),
            h.names.send_exchange().as_str().into(),
            "email".into(),
            Default::default(),
        )
        .await
        .unwrap();
    let body = serde_json::to_vec(&notify_users(&["ann"], None)).unwrap();
    let id = Uuid::now_v7().to_string();

    let first = support::context(Some(&id));
    let outcome = h
        .handler
        .handle(h.handler.decode(&body).unwrap(), &first)
        .await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(h.message().await.1, "accepted", "an attempt to come");

    let mut last = support::context(Some(&id));
    last.attempt = last.max_attempts;
    let outcome = h
        .handler
        .handle(h.handler.decode(&body).unwrap(), &last)
        .await;
    // The runner dead-letters a retry on the last attempt; the message says so first.
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    let (message_id, status, error_code, _) = h.message().await;
    let rows = h.deliveries(message_id).await;
    let email = rows
        .iter()
        .find(|r| r.1.as_deref() == Some("email"))
        .unwrap();
    assert_eq!(
        (email.3.as_str(), email.5.as_deref()),
        ("failed", Some("retries_exhausted"))
    );
    // The batch's other jobs went out before the email job failed it, so the message goes on
    // with them; had nothing gone out it would be `failed`.
    assert_eq!(error_code.as_deref(), Some("retries_exhausted"));
    let published = rows.iter().filter(|r| r.6).count();
    let expected = if published == 0 {
        "failed"
    } else {
        "fanned_out"
    };
    assert_eq!(status, expected, "{rows:?}");
    h.finish().await;
}

/// Issue #16: small direct requests that wait together are fanned out as one group, each
/// exactly once; a repeat or a redelivery among them goes its own way and adds nothing.
#[sqlx::test(migrations = "../../migrations")]
async fn requests_waiting_together_are_fanned_out_as_a_group_each_exactly_once(pool: PgPool) {
    let h = Harness::new(pool.clone(), "grouped").await.grouped(
        herald_runtime::batching::BatchSettings {
            max: 32,
            linger: std::time::Duration::from_millis(200),
            parallel: 1,
            name: "test",
        },
    );
    ann_with_three_addresses(&h).await;
    // Handled before, alone: its redelivery in the group must find it done.
    let earlier = Uuid::now_v7().to_string();
    let handled = h
        .handle(&notify_users(&["ann"], None), Some(&earlier))
        .await;
    assert_eq!(handled, Outcome::Ack);
    assert_eq!(h.all_jobs().await.len(), 3);

    let mut requests: Vec<(Value, String)> = (0..10)
        .map(|_| (notify_users(&["ann"], None), Uuid::now_v7().to_string()))
        .collect();
    // Bob has no address: his message completes at once with a failed delivery.
    requests.push((notify_users(&["bob"], None), Uuid::now_v7().to_string()));
    // Two publishes of one request (one idempotency key): one message.
    for _ in 0..2 {
        requests.push((
            notify_users(&["ann"], Some("order-9")),
            Uuid::now_v7().to_string(),
        ));
    }
    requests.push((notify_users(&["ann"], None), earlier.clone()));
    // Another tenant's request that carries the same AMQP message id as one of acme's: it
    // gets a message of its own, not acme's.
    herald_storage::tenants::create(&pool, "beta", "Beta")
        .await
        .unwrap();
    let mut beta = notify_users(&["bo"], None);
    beta["tenant"] = json!("beta");
    requests.push((beta, requests[0].1.clone()));
    let outcomes = futures::future::join_all(
        requests
            .iter()
            .map(|(body, id)| h.handle(body, Some(id.as_str()))),
    )
    .await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Ack), "{outcomes:?}");

    // 10 + 1 + 1 new messages, the earlier one, and beta's.
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM messages GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [("completed".to_owned(), 2), ("fanned_out".to_owned(), 12)]
    );
    let (beta_code,): (String,) = sqlx::query_as(
        "SELECT d.failure_code FROM deliveries d JOIN tenants t ON t.id = d.tenant_id
         WHERE t.key = 'beta'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(beta_code, "no_address");
    // Ann's 11 new messages: three jobs each, once.
    let jobs = h.all_jobs().await;
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!((jobs.len(), ids.len()), (33, 33));
    let (rows, marked): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(job_published_at) FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, marked), (3 * 12 + 2, 3 * 12));
    let (code,): (String,) = sqlx::query_as(
        "SELECT d.failure_code FROM deliveries d JOIN users u ON u.id = d.user_id
         WHERE u.external_id = 'bob'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(code, "no_address");
    // Written together: the rows of one transaction share its start time.
    let groups: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT m.created_at) FROM messages m JOIN tenants t ON t.id = m.tenant_id
         WHERE m.id::text <> $1 AND t.key = 'acme'",
    )
    .bind(&earlier)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(groups <= 2, "{groups} groups for 13 requests");
    h.finish().await;
}

/// Issue #16: messages the API stored (with their outbox rows) are fanned out in groups too,
/// under their own ids, each once; one whose lease another pass holds waits for it, and one
/// an earlier pass began is resumed alone, adding nothing.
#[sqlx::test(migrations = "../../migrations")]
async fn messages_stored_by_the_api_are_fanned_out_in_groups(pool: PgPool) {
    let h = Harness::new(pool.clone(), "grouped_api").await.grouped(
        herald_runtime::batching::BatchSettings {
            max: 32,
            linger: std::time::Duration::from_millis(200),
            parallel: 1,
            name: "test",
        },
    );
    ann_with_three_addresses(&h).await;
    let mut stored = Vec::new();
    for i in 0..10 {
        let key = format!("api-{i}");
        let body = notify_users(&["ann"], Some(&key));
        let mut tx = h.pool.begin().await.unwrap();
        let (message, _) = messages::accept(
            &mut tx,
            NewMessage {
                tenant_id: h.tenant_id,
                idempotency_key: Some(&key),
                source: messaging_core::MessageSource::Api,
                subscription_id: None,
                request: &body,
                exchange: &h.names.ingress_exchange(),
                routing_key: "api",
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        stored.push((body, message.id));
    }
    // The first was fanned out before, alone: its copy in the group adds nothing.
    let (first_body, first) = stored[0].clone();
    assert_eq!(
        h.handle(&first_body, Some(&first.to_string())).await,
        Outcome::Ack
    );
    assert_eq!(h.all_jobs().await.len(), 3);
    // Another pass holds the second's lease.
    let (busy_body, busy) = stored[1].clone();
    let (lease, _) = herald_storage::lease::try_lease(&pool, busy)
        .await
        .unwrap()
        .expect("the lease is free");

    let amqp_ids: Vec<String> = stored.iter().map(|(_, id)| id.to_string()).collect();
    let outcomes = futures::future::join_all(
        stored
            .iter()
            .zip(&amqp_ids)
            .map(|((body, _), id)| h.handle(body, Some(id.as_str()))),
    )
    .await;
    assert_eq!(outcomes[0], Outcome::Ack);
    assert!(
        matches!(outcomes[1], Outcome::Defer { .. }),
        "{:?}",
        outcomes[1]
    );
    assert!(
        outcomes[2..].iter().all(|o| *o == Outcome::Ack),
        "{outcomes:?}"
    );
    lease.release().await.unwrap();
    assert_eq!(
        h.handle(&busy_body, Some(&busy.to_string())).await,
        Outcome::Ack
    );

    // Ten messages, no more: three jobs each, once, under the API's ids (the first's were
    // taken off the queue above).
    let jobs = h.all_jobs().await;
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    let messages: HashSet<Uuid> = jobs.iter().map(|j| j.message_id).collect();
    assert_eq!((jobs.len(), ids.len()), (27, 27));
    assert_eq!(
        messages,
        stored.iter().skip(1).map(|(_, id)| *id).collect(),
        "the first's three were taken above"
    );
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM messages GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(statuses, [("fanned_out".to_owned(), 10)]);
    // The eight the group took share its transaction's start time.
    let groups: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT created_at) FROM deliveries WHERE message_id <> ALL($1)",
    )
    .bind(vec![first, busy])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(groups <= 2, "{groups} groups for 8 requests");
    h.finish().await;
}
