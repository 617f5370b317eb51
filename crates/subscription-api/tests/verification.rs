//! Issue #17, part 1: a person proves an address before Herald sends it anything but the
//! proof; chat addresses come from the bots; caps bound what an attacker can make Herald send.
//!
//! The verification message is checked where the API leaves it: the send job in the outbox,
//! addressed to the channel's send queue (the relay and the senders are tested elsewhere, and
//! end to end in herald-e2e).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use messaging_core::job::SendJob;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::TestApp;

const ANN: &str = "/api/messaging/users/ann/addresses";

async fn setup(pool: PgPool) -> (TestApp, String, String) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let ann = app.user_key("acme", "ann").await;
    (app, admin, ann)
}

/// The send jobs the API queued to `value`, oldest first, with their AMQP type and exchange.
async fn jobs_to(app: &TestApp, value: &str) -> Vec<SendJob> {
    let rows: Vec<(Vec<u8>, String, String, String)> = sqlx::query_as(
        "SELECT payload, kind, exchange, routing_key FROM outbox WHERE kind = 'herald.send_job.v1' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(payload, _, exchange, routing_key)| {
            let job: SendJob = serde_json::from_slice(&payload).unwrap();
            assert_eq!(exchange, app.names.send_exchange());
            assert_eq!(routing_key, job.channel().as_str());
            job
        })
        .filter(|job| job.to.value() == value)
        .collect()
}

/// The six-digit code in an SMS or XMPP verification message.
fn code_in(job: &SendJob) -> String {
    let at = job.content.text.find("code is ").expect("a code") + "code is ".len();
    job.content.text[at..at + 6].to_owned()
}

/// The token at the end of the mailed link.
fn token_in(job: &SendJob) -> String {
    let at = job.content.text.find("/verify/").expect("a link") + "/verify/".len();
    job.content.text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

async fn address(app: &TestApp, credential: &str, id: &str) -> Value {
    let person = app.get("/api/messaging/users/ann", credential).await;
    person.expect(StatusCode::OK)["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["addressId"] == id)
        .cloned()
        .expect("the address")
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_person_proves_an_email_by_opening_the_mailed_link_and_pressing_confirm(pool: PgPool) {
    let (app, admin, ann) = setup(pool).await;
    let added = app
        .post(
            ANN,
            &ann,
            json!({"channel": "email", "address": "ann@example.org"}),
        )
        .await;
    let added = added.expect(StatusCode::CREATED).clone();
    assert_eq!(added["verified"], false);
    assert_eq!(added["verification"]["method"], "link");
    let id = added["addressId"].as_str().unwrap();

    let jobs = jobs_to(&app, "ann@example.org").await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        job.content.subject.as_deref(),
        Some("Confirm your address for acme")
    );
    assert_eq!(
        job.message_id.to_string(),
        added["verification"]["messageId"]
    );
    let token = token_in(job);
    assert_eq!(token.len(), 32);
    // The message is tracked like any other, and its request never shows the token.
    let message = app
        .get(
            &format!("/api/messaging/messages/{}", job.message_id),
            &admin,
        )
        .await;
    let message = message.expect(StatusCode::OK);
    assert_eq!(message["source"], "verification");
    assert_eq!(
        message["deliveries"][0]["deliveryId"],
        job.delivery_id.to_string()
    );
    assert!(!message.to_string().contains(&token));
    // Only the keyed hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT code_hash FROM address_verifications")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(stored, token.as_bytes());

    // Opening the link (as a mail scanner does) changes nothing; the button does.
    let link = format!("/api/messaging/verify/{token}");
    let page = app.call("GET", &link, None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type.starts_with("text/html"));
    assert_eq!(address(&app, &ann, id).await["verified"], false);
    let confirmed = app.call("POST", &link, None, None).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let proven = address(&app, &ann, id).await;
    assert_eq!(
        (&proven["verified"], &proven["verifiedHow"]),
        (&json!(true), &json!("code"))
    );
    // Used: the link proves nothing again.
    assert_eq!(
        app.call("POST", &link, None, None).await.status,
        StatusCode::NOT_FOUND
    );
    // Proven and in service: adding it again sends nothing.
    app.post(
        ANN,
        &ann,
        json!({"channel": "email", "address": "ann@example.org"}),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(jobs_to(&app, "ann@example.org").await.len(), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_sms_code_allows_five_tries_and_then_is_void(pool: PgPool) {
    let (app, _, ann) = setup(pool).await;
    let added = app
        .post(
            ANN,
            &ann,
            json!({"channel": "sms", "address": "+41 79 123 45 67"}),
        )
        .await;
    let id = added.expect_str(StatusCode::CREATED, "addressId");
    let code = code_in(&jobs_to(&app, "+41791234567").await[0]);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let verify = format!("{ANN}/{id}/verify");
    for left in (1..=4).rev() {
        let refused = app.post(&verify, &ann, json!({"code": wrong})).await;
        refused.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("code"));
        assert!(
            refused.body["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("{left} tries left")),
            "{}",
            refused.body
        );
    }
    let last = app.post(&verify, &ann, json!({"code": wrong})).await;
    assert!(last.body["detail"].as_str().unwrap().contains("void"));
    // The right code no longer counts.
    app.post(&verify, &ann, json!({"code": code}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("code"));
    assert_eq!(address(&app, &ann, &id).await["verified"], false);

    // A new code works.
    let resend = format!("{ANN}/{id}/verification");
    let sent = app.post(&resend, &ann, json!({})).await;
    assert_eq!(sent.expect(StatusCode::ACCEPTED)["method"], "code");
    let code = code_in(jobs_to(&app, "+41791234567").await.last().unwrap());
    let proven = app.post(&verify, &ann, json!({"code": code})).await;
    assert_eq!(proven.expect(StatusCode::OK)["verified"], true);
    app.post(&resend, &ann, json!({}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_expired_code_and_another_persons_address_prove_nothing(pool: PgPool) {
    let (app, _, ann) = setup(pool).await;
    let bob = app.user_key("acme", "bob").await;
    let id = app
        .post(
            ANN,
            &ann,
            json!({"channel": "xmpp", "address": "ann@example.org"}),
        )
        .await
        .expect_str(StatusCode::CREATED, "addressId");
    let code = code_in(&jobs_to(&app, "ann@example.org").await[0]);
    // Bob knows the code (he could read it somewhere) but the address is not his.
    app.post(
        &format!("/api/messaging/users/bob/addresses/{id}/verify"),
        &bob,
        json!({"code": code}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    sqlx::query("UPDATE address_verifications SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = app
        .post(&format!("{ANN}/{id}/verify"), &ann, json!({"code": code}))
        .await;
    expired.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("code"));
    assert!(expired.body["detail"].as_str().unwrap().contains("expired"));
    assert_eq!(address(&app, &ann, &id).await["verified"], false);
}

#[sqlx::test(migrations = "../../migrations")]
async fn verification_messages_are_capped_per_address_and_per_tenant(pool: PgPool) {
    let (app, admin, ann) = setup(pool).await;
    let id = app
        .post(
            ANN,
            &ann,
            json!({"channel": "sms", "address": "+41790000001"}),
        )
        .await
        .expect_str(StatusCode::CREATED, "addressId");
    let resend = format!("{ANN}/{id}/verification");
    for _ in 0..4 {
        app.post(&resend, &ann, json!({}))
            .await
            .expect(StatusCode::ACCEPTED);
    }
    let capped = app.post(&resend, &ann, json!({})).await;
    capped.expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    let retry = capped.retry_after.expect("Retry-After");
    assert!(retry > 23 * 3600 && retry <= 24 * 3600, "{retry}");
    // Removing and adding it again does not reset the count, nor does another person (or
    // an admin) asking for the same number.
    app.delete(&format!("{ANN}/{id}"), &ann)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.post(
        ANN,
        &ann,
        json!({"channel": "sms", "address": "+41790000001"}),
    )
    .await
    .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    app.post(
        "/api/messaging/users/bob/addresses",
        &admin,
        json!({"channel": "sms", "address": "+41790000001"}),
    )
    .await
    .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(jobs_to(&app, "+41790000001").await.len(), 5);

    // The tenant's hourly cap (200 by default), whatever the addresses.
    sqlx::query(
        "INSERT INTO verification_sends (tenant_id, channel, value, actor)
         SELECT t.id, 'email', 'x' || g || '@example.org', 'test'
         FROM tenants t, generate_series(1, 195) g WHERE t.key = 'acme'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let tenant_capped = app
        .post(
            ANN,
            &ann,
            json!({"channel": "email", "address": "ann@example.org"}),
        )
        .await;
    tenant_capped.expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    assert!(
        tenant_capped.body["detail"]
            .as_str()
            .unwrap()
            .contains("tenant")
    );
    // Refused as a whole: the address was not added.
    let person = app.get("/api/messaging/users/ann", &ann).await;
    assert!(
        person.expect(StatusCode::OK)["addresses"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_person_has_at_most_five_addresses_per_channel(pool: PgPool) {
    let (app, _, ann) = setup(pool).await;
    for n in 0..5 {
        app.post(
            ANN,
            &ann,
            json!({"channel": "email", "address": format!("a{n}@example.org")}),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    app.post(
        ANN,
        &ann,
        json!({"channel": "email", "address": "a5@example.org"}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    // One they have already is not a new one.
    app.post(
        ANN,
        &ann,
        json!({"channel": "email", "address": "a0@example.org"}),
    )
    .await
    .expect(StatusCode::OK);
    app.post(
        ANN,
        &ann,
        json!({"channel": "sms", "address": "+41790000002"}),
    )
    .await
    .expect(StatusCode::CREATED);
}

#[sqlx::test(migrations = "../../migrations")]
async fn sms_goes_only_to_the_tenants_country_codes(pool: PgPool) {
    let (app, admin, ann) = setup(pool).await;
    let global = app.global_admin().await;
    // The tests' default list: 1, 41, 44, 49.
    app.post(
        ANN,
        &ann,
        json!({"channel": "sms", "address": "+33612345678"}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    // The tenant's admin sees the list that refused the number, and where it comes from.
    let codes = "/api/messaging/tenants/acme/sms-country-codes";
    let seen = app.get(codes, &admin).await;
    let seen = seen.expect(StatusCode::OK);
    assert_eq!(
        (&seen["smsCountryCodes"], &seen["source"]),
        (&json!(["1", "41", "44", "49"]), &json!("default"))
    );
    let set = app
        .put(codes, &global, json!({"smsCountryCodes": ["+33", "32"]}))
        .await;
    assert_eq!(
        set.expect(StatusCode::OK)["smsCountryCodes"],
        json!(["32", "33"])
    );
    let seen = app.get(codes, &admin).await;
    let seen = seen.expect(StatusCode::OK);
    assert_eq!(
        (&seen["smsCountryCodes"], &seen["source"]),
        (&json!(["32", "33"]), &json!("tenant"))
    );
    app.put(
        "/api/messaging/tenants/acme/sms-country-codes",
        &admin,
        json!({"smsCountryCodes": ["41"]}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.put(
        "/api/messaging/tenants/acme/sms-country-codes",
        &global,
        json!({"smsCountryCodes": ["41,49"]}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("smsCountryCodes"));
    app.post(
        ANN,
        &ann,
        json!({"channel": "sms", "address": "+33612345678"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let refused = app
        .post(
            ANN,
            &ann,
            json!({"channel": "sms", "address": "+41791234567"}),
        )
        .await;
    refused.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("+32, +33")
    );
    // An admin's import is held to the same list.
    app.post(
        ANN,
        &admin,
        json!({"channel": "sms", "address": "+41791234567", "verified": true}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
}

#[sqlx::test(migrations = "../../migrations")]
async fn chat_addresses_come_from_the_bots_or_an_admins_import(pool: PgPool) {
    let (app, admin, ann) = setup(pool).await;
    for (credential, channel, address) in [
        (&ann, "telegram", "4242"),
        (&ann, "discord", "123456789012345678"),
        (&admin, "telegram", "4242"),
    ] {
        let refused = app
            .post(
                ANN,
                credential,
                json!({"channel": channel, "address": address}),
            )
            .await;
        refused.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));
        assert!(
            refused.body["detail"]
                .as_str()
                .unwrap()
                .contains("link code")
        );
    }
    app.post(
        ANN,
        &ann,
        json!({"channel": "telegram", "address": "4242", "verified": true}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    let imported = app
        .post(
            ANN,
            &admin,
            json!({"channel": "telegram", "address": "4242", "verified": true}),
        )
        .await;
    let imported = imported.expect(StatusCode::CREATED);
    assert_eq!(
        (&imported["verified"], &imported["verifiedHow"]),
        (&json!(true), &json!("import"))
    );
    let by: String = sqlx::query_scalar("SELECT verified_by FROM addresses WHERE value = '4242'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(by.starts_with("api-key:"), "{by}");
    assert!(
        imported.get("verification").is_none(),
        "no code for an import"
    );

    // WebSocket keys name the tenant's own clients: admins add them, proven by the tenant.
    app.post(
        ANN,
        &ann,
        json!({"channel": "websocket", "address": "bots/ann"}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    let ws = app
        .post(
            ANN,
            &admin,
            json!({"channel": "websocket", "address": "bots/ann"}),
        )
        .await;
    assert_eq!(ws.expect(StatusCode::CREATED)["verifiedHow"], "tenant");
}

#[sqlx::test(migrations = "../../migrations")]
async fn adding_an_unreachable_address_again_keeps_it_out_of_service_until_proven(pool: PgPool) {
    let (app, _, ann) = setup(pool).await;
    app.prove("acme", "ann", "email", "ann@example.org").await;
    sqlx::query("UPDATE addresses SET state = 'unreachable', state_reason = 'bounced'")
        .execute(&app.pool)
        .await
        .unwrap();
    let again = app
        .post(
            ANN,
            &ann,
            json!({"channel": "email", "address": "ann@example.org"}),
        )
        .await;
    let again = again.expect(StatusCode::OK).clone();
    assert_eq!(
        again["state"], "unreachable",
        "adding it again proves nothing"
    );
    assert_eq!(again["verification"]["method"], "link");
    let token = token_in(&jobs_to(&app, "ann@example.org").await[0]);
    let link = format!("/api/messaging/verify/{token}");
    assert_eq!(
        app.call("POST", &link, None, None).await.status,
        StatusCode::OK
    );
    let id = again["addressId"].as_str().unwrap();
    let back = address(&app, &ann, id).await;
    assert_eq!(
        (&back["state"], &back["verified"]),
        (&json!("active"), &json!(true))
    );
    let history: Vec<(String, String)> =
        sqlx::query_as("SELECT state, reason FROM address_state_changes ORDER BY changed_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(history, [("active".into(), "proven again (code)".into())]);
}
