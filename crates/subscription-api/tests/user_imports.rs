//! `POST /user-imports` (issue #17): many people with their addresses in one request, each
//! checked and written on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use subscription_api::config::LimitsConfig;
use support::TestApp;

const IMPORTS: &str = "/api/messaging/user-imports";

#[sqlx::test(migrations = "../../migrations")]
async fn a_thousand_people_with_an_address_each_take_one_request(pool: PgPool) {
    // R18's default: 60 requests a minute, which one person per request would hit at 60.
    let app = TestApp::with_limits(
        pool,
        LimitsConfig {
            sms_country_codes: "41".into(),
            ..LimitsConfig::default()
        },
    )
    .await;
    let admin = app.tenant_with_admin("acme").await;
    let people: Vec<Value> = (0..1_000)
        .map(|n| {
            json!({"userId": format!("p-{n}"), "locale": "de", "addresses": [
                {"channel": "email", "address": format!("p{n}@example.org"), "verified": true}
            ]})
        })
        .collect();
    let response = app.post(IMPORTS, &admin, json!({"users": people})).await;
    let body = response.expect(StatusCode::OK);
    assert_eq!(
        (
            body["created"].as_u64(),
            body["updated"].as_u64(),
            body["failed"].as_u64()
        ),
        (Some(1_000), Some(0), Some(0))
    );
    assert_eq!(body["results"][999]["userId"], "p-999");
    assert_eq!(
        body["results"][999]["user"]["addresses"][0]["verified"],
        true
    );
    assert_eq!(
        body["results"][999]["user"]["addresses"][0]["verifiedHow"],
        "import"
    );

    // Again, with new settings and one more address each: updated, nothing doubled.
    let people: Vec<Value> = (0..1_000)
        .map(|n| {
            json!({"userId": format!("p-{n}"), "deliveryMode": "preferred", "preferredChannel": "sms", "addresses": [
                {"channel": "email", "address": format!("p{n}@example.org"), "verified": true},
                {"channel": "sms", "address": format!("+4179{:07}", n), "verified": true}
            ]})
        })
        .collect();
    let body = app.post(IMPORTS, &admin, json!({"users": people})).await;
    let body = body.expect(StatusCode::OK);
    assert_eq!(
        (body["created"].as_u64(), body["updated"].as_u64()),
        (Some(0), Some(1_000))
    );
    let person = app.get("/api/messaging/users/p-512", &admin).await;
    let person = person.expect(StatusCode::OK);
    assert_eq!(person["deliveryMode"], "preferred");
    assert_eq!(
        person["locale"],
        Value::Null,
        "settings given are replaced, as PUT does"
    );
    assert_eq!(person["addresses"].as_array().unwrap().len(), 2);
    // The caller still has most of its minute: the whole import counted twice.
    app.get("/api/messaging/users", &admin)
        .await
        .expect(StatusCode::OK);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_bad_entry_is_reported_with_its_place_and_the_others_are_written(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.tenant_with_admin("acme").await;
    app.put(
        "/api/messaging/users/keeps",
        &admin,
        json!({"locale": "fr"}),
    )
    .await
    .expect(StatusCode::OK);
    let body = json!({"users": [
        {"userId": "ann", "addresses": [{"channel": "email", "address": "ann@example.org"}]},
        {"userId": "tab\tin an id"},
        {"userId": "bob", "addresses": [
            {"channel": "email", "address": "bob@example.org", "verified": true},
            {"channel": "email", "address": "not-an-address"}
        ]},
        {"userId": "cid", "addresses": [{"channel": "sms", "address": "+88212345678", "verified": true}]},
        {"userId": "dan", "addresses": [{"channel": "telegram", "address": "12345"}]},
        {"userId": "eve", "deliveryMode": "preferred"},
        {"userId": "keeps", "addresses": [{"channel": "xmpp", "address": "keeps@example.org", "verified": true}]}
    ]});
    let response = app.post(IMPORTS, &admin, body).await;
    let body = response.expect(StatusCode::OK);
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "created", "failed", "failed", "failed", "failed", "failed", "updated"
        ]
    );
    assert_eq!(
        (
            body["created"].as_u64(),
            body["updated"].as_u64(),
            body["failed"].as_u64()
        ),
        (Some(1), Some(1), Some(5))
    );
    let fields: Vec<&str> = results
        .iter()
        .filter_map(|r| r["error"]["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "users[1].userId",
            "users[2].addresses[1].address",
            "users[3].addresses[0].address",
            "users[4].addresses[0].channel",
            "users[5].preferredChannel",
        ]
    );
    assert_eq!(results[1]["error"]["status"], 422);
    // An address added without `verified` waits for its code, as one added alone does.
    assert_eq!(results[0]["user"]["addresses"][0]["verified"], false);
    assert!(results[0]["user"]["addresses"][0]["verification"].is_object());
    // Nothing of a failed entry was written, not even its valid first address.
    app.get("/api/messaging/users/bob", &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    // A known person without settings in the entry keeps theirs.
    let keeps = app.get("/api/messaging/users/keeps", &admin).await;
    assert_eq!(keeps.expect(StatusCode::OK)["locale"], "fr");
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_admins_import_and_at_most_a_thousand_at_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.tenant_with_admin("acme").await;
    let user = app.user_key("acme", "ann").await;
    let one = json!({"users": [{"userId": "ann"}]});
    app.post(IMPORTS, &user, one)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    let too_many: Vec<Value> = (0..1_001)
        .map(|n| json!({"userId": format!("p-{n}")}))
        .collect();
    app.post(IMPORTS, &admin, json!({"users": too_many}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("users"));
    app.post(IMPORTS, &admin, json!({"users": []}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("users"));
}
