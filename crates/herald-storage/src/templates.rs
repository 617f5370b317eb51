//! Message templates per subscription, channel and locale (R13). A row without a channel
//! serves every channel that has no row of its own.

use chrono::{DateTime, Utc};
use messaging_core::Channel;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};

#[derive(Debug, Clone, FromRow)]
pub struct Template {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub subscription_id: Uuid,
    /// `None`: the default for channels without a template of their own.
    pub channel: Option<Channel>,
    pub locale: String,
    pub subject: Option<String>,
    pub body: String,
    pub html: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Which template: one per (subscription, channel or default, locale).
#[derive(Debug, Clone, Copy)]
pub struct TemplateKey<'a> {
    pub tenant_id: Uuid,
    pub subscription_id: Uuid,
    pub channel: Option<Channel>,
    pub locale: &'a str,
}

pub struct TemplateText<'a> {
    pub subject: Option<&'a str>,
    pub body: &'a str,
    pub html: Option<&'a str>,
}

/// All of a subscription's templates, default channel first, then by channel and locale.
/// A subscription has at most channels x locales of them, so no paging.
pub async fn for_subscription(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Uuid,
) -> Result<Vec<Template>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT * FROM templates WHERE tenant_id = $1 AND subscription_id = $2
         ORDER BY channel NULLS FIRST, locale",
    )
    .bind(tenant_id)
    .bind(subscription_id)
    .fetch_all(db)
    .await?)
}

pub async fn get(db: impl PgExecutor<'_>, key: TemplateKey<'_>) -> Result<Template, StoreError> {
    Ok(sqlx::query_as(
        "SELECT * FROM templates WHERE tenant_id = $1 AND subscription_id = $2
         AND channel IS NOT DISTINCT FROM $3 AND locale = $4",
    )
    .bind(key.tenant_id)
    .bind(key.subscription_id)
    .bind(key.channel)
    .bind(key.locale)
    .fetch_one(db)
    .await?)
}

/// Creates or replaces the template; `true` when it was created.
pub async fn put(
    db: impl PgExecutor<'_>,
    key: TemplateKey<'_>,
    text: TemplateText<'_>,
) -> Result<(Template, bool), StoreError> {
    #[derive(FromRow)]
    struct Upserted {
        #[sqlx(flatten)]
        template: Template,
        created: bool,
    }
    // `xmax = 0` holds only for a freshly inserted row: it tells create from replace in one
    // statement, without a race between a SELECT and the upsert.
    let row: Upserted = sqlx::query_as(
        "INSERT INTO templates (id, tenant_id, subscription_id, channel, locale, subject, body, html)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (subscription_id, channel, locale) DO UPDATE
            SET subject = EXCLUDED.subject, body = EXCLUDED.body, html = EXCLUDED.html,
                updated_at = now()
            WHERE templates.tenant_id = EXCLUDED.tenant_id
         RETURNING *, (xmax = 0) AS created",
    )
    .bind(Uuid::now_v7())
    .bind(key.tenant_id)
    .bind(key.subscription_id)
    .bind(key.channel)
    .bind(key.locale)
    .bind(text.subject)
    .bind(text.body)
    .bind(text.html)
    .fetch_one(db)
    .await?;
    Ok((row.template, row.created))
}

pub async fn delete(db: impl PgExecutor<'_>, key: TemplateKey<'_>) -> Result<(), StoreError> {
    expect_row(
        sqlx::query(
            "DELETE FROM templates WHERE tenant_id = $1 AND subscription_id = $2
             AND channel IS NOT DISTINCT FROM $3 AND locale = $4",
        )
        .bind(key.tenant_id)
        .bind(key.subscription_id)
        .bind(key.channel)
        .bind(key.locale)
        .execute(db)
        .await?,
    )
}
