//! Triggers and direct messages (R1, R14, R16, R17): admins ask Herald to notify, and get
//! `202 Accepted` once the request is stored with its outbox row. An `Idempotency-Key`
//! header makes a repeat return the first message instead of sending again (R44).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use herald_storage::messages;
use herald_storage::{StoreError, channel_health, deliveries};
use messaging_core::EnvelopeVersion;
use messaging_core::channel::Channel;
use messaging_core::ingress::{
    Content, DeliveryMode, Ingress, MAX_USERS_PER_REQUEST, NotifyRequest, Recipients,
    TemplateContent,
};
use messaging_core::values::{IdempotencyKey, Locale, TenantKey, UserId};
use messaging_core::{DeliveryStatus, MessageSource, MessageStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::accepts::Accept;
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(trigger))
        .routes(routes!(send))
        .routes(routes!(read))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerRequest {
    /// What the subscription's templates see.
    #[serde(default)]
    pub event_parameters: Map<String, Value>,
    /// Overrides each recipient's locale.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::LocaleText>)]
    pub locale: Option<String>,
}

/// A direct message to people by the tenant's ids for them (R1), in the versioned envelope's
/// shape: `to`, `content`, `channels`, `mode`, `expiresAt` mean what they mean on the broker.
/// `userIds` is the older REST spelling of `to.users`, still read for existing clients. Its
/// schema is [`crate::schema::DirectMessageBody`], which says the same.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectMessageRequest {
    #[serde(default)]
    pub to: Option<DirectRecipients>,
    /// The older spelling of `to.users`.
    #[serde(default)]
    pub user_ids: Option<Vec<String>>,
    pub content: Content,
    #[serde(default)]
    pub channels: Option<Vec<Channel>>,
    /// `all` or `preferred` (R2); absent: each user's own setting.
    #[serde(default)]
    pub mode: Option<DeliveryMode>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The envelope's `to` as a direct message takes it: people, not a subscription (that is
/// the trigger route).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectRecipients {
    pub users: Vec<String>,
}

impl DirectMessageRequest {
    /// The recipients, with errors naming the field the client used (`to.users` or `userIds`).
    fn users(&mut self) -> Result<Vec<UserId>, ApiError> {
        let (field, raw) = match (self.to.take(), self.user_ids.take()) {
            (Some(to), None) => ("to.users", to.users),
            (None, Some(ids)) => ("userIds", ids),
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "userIds",
                    "name the recipients once: in `to.users`, or in its older spelling `userIds`",
                ));
            }
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid body",
                    "missing field `to`: name the recipients in `to.users`",
                ));
            }
        };
        if raw.is_empty() {
            return Err(ApiError::invalid(field, "must name at least one user"));
        }
        if raw.len() > MAX_USERS_PER_REQUEST {
            return Err(ApiError::invalid(
                field,
                format!("names more than {MAX_USERS_PER_REQUEST} users; use a subscription"),
            ));
        }
        raw.iter()
            .map(|u| UserId::parse(u).map_err(|e| ApiError::invalid(field, e.to_string())))
            .collect()
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub message_id: Uuid,
    #[schema(value_type = crate::schema::MessageStatusName)]
    pub status: MessageStatus,
    /// `true` when an earlier request with the same Idempotency-Key is answered again.
    pub repeated: bool,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            let raw = v
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?;
            IdempotencyKey::parse(raw)
                .map_err(|e| ApiError::invalid("Idempotency-Key", e.to_string()))
        })
        .transpose()
}

#[utoipa::path(post, path = "/trigger/{subscription_id}", tag = "triggers", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)"), ("Idempotency-Key" = Option<crate::schema::IdempotencyKeyHeader>, Header, description = "Repeats with the same key get the first answer")), request_body = TriggerRequest, responses((status = 202, description = "Stored; it reaches the broker even if the broker is down now", body = Accepted)))]
async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TriggerRequest>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let subscription = super::subscriptions::find(&state, &caller, &id).await?;
    // R16: a tenant admin does everything in the tenant except system subscriptions.
    if subscription.system && !caller.is_global_admin() {
        return Err(ApiError::forbidden(
            "only the global admin triggers system subscriptions",
        ));
    }
    if !subscription.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Subscription disabled",
            format!("{} is disabled; enable it to trigger it", subscription.key),
        ));
    }
    let locale = body
        .locale
        .as_deref()
        .map(|l| Locale::parse(l).map_err(|e| ApiError::invalid("locale", e.to_string())))
        .transpose()?;
    let key = messaging_core::values::SubscriptionKey::parse(&subscription.key)
        .map_err(|e| ApiError::invalid("subscriptionId", e.to_string()))?;
    let request = NotifyRequest {
        version: EnvelopeVersion,
        tenant: tenant_key(&caller)?,
        idempotency_key: idempotency_key(&headers)?,
        to: Recipients::Subscription(key),
        content: Content::Template(TemplateContent {
            subscription: None,
            data: body.event_parameters,
            locale,
        }),
        channels: None,
        mode: None,
        expires_at: None,
    };
    // Counted once the request is known to be valid: a refused one costs nothing.
    let recipients =
        herald_storage::registrations::count_enabled(&state.pool, subscription.id).await?;
    state.limits.trigger(
        subscription.tenant_id,
        &subscription.key,
        recipients.max(0) as u64,
    )?;
    accept(&state, &caller, request, Some(subscription.id)).await
}

#[utoipa::path(post, path = "/messages", tag = "messages", params(("Idempotency-Key" = Option<crate::schema::IdempotencyKeyHeader>, Header, description = "Repeats with the same key get the first answer")), request_body = crate::schema::DirectMessageBody, responses((status = 202, description = "Stored; it reaches the broker even if the broker is down now", body = Accepted)))]
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<DirectMessageRequest>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let users = body.users()?;
    let recipients = users.len() as u64;
    let request = NotifyRequest {
        version: EnvelopeVersion,
        tenant: tenant_key(&caller)?,
        idempotency_key: idempotency_key(&headers)?,
        to: Recipients::Users(users),
        content: body.content,
        channels: body.channels,
        mode: body.mode,
        expires_at: body.expires_at,
    };
    request.validate().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid message",
            e.reason,
        )
    })?;
    // R16: a system subscription's templates are the global admin's, here as on /trigger.
    if let Content::Template(TemplateContent {
        subscription: Some(key),
        ..
    }) = &request.content
        && !caller.is_global_admin()
    {
        let tenant = caller.tenant()?;
        match herald_storage::subscriptions::by_key(&state.pool, tenant.id, key.as_str()).await {
            Ok(subscription) if subscription.system => {
                return Err(ApiError::forbidden(
                    "only the global admin sends with a system subscription's templates",
                ));
            }
            // Unknown: the router records `no_subscription` on the message, as for a trigger.
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(other) => return Err(other.into()),
        }
    }
    // Counted once the request is known to be valid: a refused one costs nothing.
    state.limits.message(caller.tenant()?.id, recipients)?;
    accept(&state, &caller, request, None).await
}

fn tenant_key(caller: &Caller) -> Result<TenantKey, ApiError> {
    TenantKey::parse(&caller.tenant()?.key).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Stores the message with its outbox row in one transaction and answers 202.
async fn accept(
    state: &AppState,
    caller: &Caller,
    request: NotifyRequest,
    subscription_id: Option<Uuid>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant()?;
    let encoded: Value =
        serde_json::from_slice(&Ingress::Notify(request.clone()).encode()).unwrap_or_default();
    let (message, new) = state
        .accepts
        .accept(Accept {
            tenant_id: tenant.id,
            idempotency_key: request
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str().to_owned()),
            subscription_id,
            request: encoded.clone(),
            exchange: state.names.ingress_exchange(),
        })
        .await?;
    // A key names one request. The same key with another request is a client bug (a reused
    // counter, a key derived from too little): answering the first message would silently
    // drop the second one, so say so instead.
    if !new && message.request != encoded {
        return Err(ApiError {
            field: Some("Idempotency-Key".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key reused",
                format!(
                    "this key was used for a different request (message {}); use a new key for a new request",
                    message.id
                ),
            )
        });
    }
    if new {
        tracing::info!(message_id = %message.id, tenant = %tenant.key, actor = %caller.actor, "message accepted");
    }
    let location = format!("/api/messaging/messages/{}", message.id);
    let body = Accepted {
        message_id: message.id,
        status: message.status,
        repeated: !new,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub message_id: Uuid,
    #[schema(value_type = crate::schema::MessageStatusName)]
    pub status: MessageStatus,
    #[schema(value_type = crate::schema::MessageSourceName)]
    pub source: MessageSource,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub request: Value,
    /// One page of the message's deliveries, in order (`limit`, 50 by default, at most 200).
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page of deliveries; `null` on the last.
    #[schema(value_type = Option<crate::schema::CursorText>)]
    pub deliveries_next_cursor: Option<String>,
    /// All of the message's deliveries, counted.
    pub delivery_counts: DeliveryCounts,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryCounts {
    pub total: i64,
    pub sent: i64,
    pub failed: i64,
    pub pending: i64,
}

/// One recipient's delivery on one channel, with its R4 class when it failed.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub delivery_id: Uuid,
    pub message_id: Uuid,
    pub subscription_id: Option<String>,
    pub user_id: Option<String>,
    #[schema(value_type = Option<crate::schema::ChannelName>)]
    pub channel: Option<Channel>,
    pub address: Option<String>,
    #[schema(value_type = crate::schema::DeliveryStatusName)]
    pub status: DeliveryStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Value>,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub modified_at: DateTime<Utc>,
}

impl From<deliveries::Delivery> for DeliveryView {
    fn from(d: deliveries::Delivery) -> Self {
        let failure = d.failure_class.as_ref().map(|class| {
            serde_json::json!({"class": class, "code": d.failure_code, "message": d.failure_message})
        });
        DeliveryView {
            delivery_id: d.id,
            message_id: d.message_id,
            subscription_id: d.subscription_key,
            user_id: d.user_external_id,
            channel: d.channel,
            address: d.address,
            status: d.status,
            failure,
            attempts: d.attempts,
            sent_at: d.sent_at,
            modified_at: d.updated_at,
        }
    }
}

/// How old the router's last look at a channel may be and still explain its pending
/// deliveries (the router looks every 10 s by default).
const CHANNEL_HEALTH_FRESH_SECS: i64 = 60;

/// R4 (c) while it happens: a pending delivery whose channel's senders are all paused by
/// their breakers (the provider is down) or gone gets a `failure` of class `unhealthy` that
/// says so, from the router's last look at the channel (`channel_health`). It stays pending:
/// the job is kept and sent when the sender can. This replaces the failure of its last
/// attempt (a 503 is `temporary` on its own), because the stall is why it waits now. The
/// explanation is best effort: without it the answer is still right, only less helpful, so
/// a database error here is not the request's.
pub(crate) async fn explain_pending(pool: &herald_storage::PgPool, views: &mut [DeliveryView]) {
    let unexplained = |v: &DeliveryView| v.status == DeliveryStatus::Pending;
    if !views.iter().any(unexplained) {
        return;
    }
    let health = match channel_health::current(pool, CHANNEL_HEALTH_FRESH_SECS).await {
        Ok(health) => health,
        Err(error) => {
            tracing::debug!(%error, "cannot read the channels' health; pending deliveries unexplained");
            return;
        }
    };
    for view in views.iter_mut().filter(|v| unexplained(v)) {
        let stalled = health
            .iter()
            .find(|h| Some(h.channel) == view.channel)
            .and_then(|h| h.stalled());
        if let Some(stalled) = stalled {
            view.failure = Some(serde_json::json!({
                "class": messaging_core::FailureClass::Unhealthy,
                "code": stalled.code,
                "message": stalled.message,
            }));
        }
    }
}

#[utoipa::path(get, path = "/messages/{message_id}", tag = "messages", params(("message_id" = Uuid, Path), super::Paging), responses((status = 200, description = "The message with a page of its recipients' deliveries, each with its R4 class, and their counts", body = MessageView)))]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(paging): ApiQuery<super::Paging>,
) -> Result<Json<MessageView>, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    let page = paging.request()?;
    let message = messages::by_id(&state.pool, tenant.id, id)
        .await
        .map_err(not_found_as("message"))?;
    let deliveries = deliveries::for_message_page(&state.pool, tenant.id, id, page).await?;
    let (total, sent, failed) = deliveries::counts_for_message(&state.pool, tenant.id, id).await?;
    let mut views: Vec<DeliveryView> = deliveries.items.into_iter().map(Into::into).collect();
    explain_pending(&state.pool, &mut views).await;
    let error = message
        .error_code
        .as_ref()
        .map(|code| serde_json::json!({"code": code, "message": message.error_message}));
    Ok(Json(MessageView {
        message_id: message.id,
        status: message.status,
        source: message.source,
        created_at: message.created_at,
        completed_at: message.completed_at,
        error,
        request: message.request,
        deliveries: views,
        deliveries_next_cursor: deliveries.next_cursor,
        delivery_counts: DeliveryCounts {
            total,
            sent,
            failed,
            pending: total - sent - failed,
        },
    }))
}
