//! The closed lists in SQL (domains and CHECK constraints) name exactly the words of the Rust
//! enums that read and write those columns. A channel added to `Channel` without a migration
//! (or the other way round) fails here, not at the first insert in production.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use messaging_core::ingress::DeliveryMode;
use messaging_core::{
    AddressKind, AddressState, Channel, DeliveryStatus, FailureClass, MessageSource, MessageStatus,
    Role, RoomChangeKind, RoomState, TicketState,
};
use sqlx::PgPool;

/// The quoted words of a constraint's definition (`CHECK ((VALUE = ANY (ARRAY['a'::text,
/// 'b'::text])))` -> {a, b}).
fn quoted_words(definition: &str) -> BTreeSet<String> {
    definition
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

async fn domain_words(pool: &PgPool, domain: &str) -> BTreeSet<String> {
    let definitions: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_type t ON t.oid = c.contypid WHERE t.typname = $1",
    )
    .bind(domain)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(definitions.len(), 1, "domain {domain}: {definitions:?}");
    quoted_words(&definitions[0])
}

async fn check_words(pool: &PgPool, table: &str, column: &str) -> BTreeSet<String> {
    let name = format!("{table}_{column}_check");
    let definition: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1",
    )
    .bind(&name)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("constraint {name}: {e}"));
    quoted_words(&definition)
}

fn words<'a>(all: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    all.into_iter().map(str::to_owned).collect()
}

#[sqlx::test(migrations = "../../migrations")]
async fn sql_lists_match_the_rust_enums(pool: PgPool) {
    assert_eq!(
        domain_words(&pool, "herald_channel").await,
        words(Channel::ALL.iter().map(|c| c.as_str())),
        "herald_channel (a migration must list every Channel)"
    );
    assert_eq!(
        domain_words(&pool, "herald_address_kind").await,
        words(AddressKind::ALL.iter().map(|k| k.as_str())),
        "herald_address_kind (a migration must list every AddressKind)"
    );
    let checks: [(&str, &str, BTreeSet<String>); 11] = [
        (
            "addresses",
            "state",
            words(AddressState::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "messages",
            "status",
            words(MessageStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "messages",
            "source",
            words(MessageSource::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "deliveries",
            "status",
            words(DeliveryStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "deliveries",
            "failure_class",
            words(
                [
                    FailureClass::Temporary,
                    FailureClass::Permanent,
                    FailureClass::Unhealthy,
                ]
                .map(FailureClass::as_str),
            ),
        ),
        (
            "users",
            "delivery_mode",
            words([DeliveryMode::All, DeliveryMode::Preferred].map(DeliveryMode::as_str)),
        ),
        (
            "api_keys",
            "role",
            words(Role::ALL.iter().map(|r| r.as_str())),
        ),
        (
            "support_tickets",
            "state",
            words(TicketState::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "help_desk_rooms",
            "state",
            words(RoomState::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "help_desk_room_changes",
            "state",
            words(RoomState::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "help_desk_room_changes",
            "kind",
            words(RoomChangeKind::ALL.iter().map(|k| k.as_str())),
        ),
    ];
    for (table, column, expected) in checks {
        assert_eq!(
            check_words(&pool, table, column).await,
            expected,
            "{table}.{column}"
        );
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn enums_read_and_write_the_channel_domain(pool: PgPool) {
    for &channel in Channel::ALL.iter() {
        let back: Channel = sqlx::query_scalar("SELECT $1::herald_channel")
            .bind(channel)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(back, channel);
    }
    let arrays: Vec<Option<Channel>> =
        sqlx::query_scalar("SELECT unnest($1::text[])::herald_channel")
            .bind(vec![Some(Channel::Email), None])
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(arrays, [Some(Channel::Email), None]);
    let refused = sqlx::query("SELECT 'fax'::herald_channel")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("herald_channel"), "{refused}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_address_kind_must_fit_its_channel(pool: PgPool) {
    let tenant = uuid::Uuid::now_v7();
    let user = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, key, name) VALUES ($1, 'acme', 'Acme')")
        .bind(tenant)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (id, tenant_id, external_id) VALUES ($1, $2, 'ann')")
        .bind(user)
        .bind(tenant)
        .execute(&pool)
        .await
        .unwrap();
    let insert = |channel: Channel, kind: AddressKind| {
        sqlx::query(
            "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value)
             VALUES ($1, $2, $3, $4, $5, 'room@muc.example.org')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(tenant)
        .bind(user)
        .bind(channel)
        .bind(kind)
        .execute(&pool)
    };
    insert(Channel::Xmpp, AddressKind::XmppRoom).await.unwrap();
    let wrong = insert(Channel::Email, AddressKind::XmppRoom)
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("addresses_kind_fits_channel"),
        "{wrong}"
    );
}
