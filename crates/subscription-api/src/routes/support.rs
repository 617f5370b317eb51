//! `/support` (R53): the tickets people open by writing `/support <text>` to a chat bot, the
//! staff's replies, and which subscription tells the staff about new tickets.
//!
//! The router opens tickets (it owns the bots' events); here admins of the tenant list, answer
//! and close them. A reply is stored and put in the outbox as a chat answer in one
//! transaction, so it reaches the person's chat, through the same bot, exactly when it is
//! committed: never a reply that was not sent, never a message without its record.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::page::Page;
use herald_storage::support::{self, Reply, Ticket};
use herald_storage::{StoreError, outbox};
use messaging_core::events::{Answer, ChatAnswer, short_id};
use messaging_core::{Address, Channel, TicketState};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::subscriptions::{find, may_change};
use super::{Paging, check_message};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::schema::MAX_REPLY_CHARS;
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read))
        .routes(routes!(reply))
        .routes(routes!(reply_short))
        .routes(routes!(close))
        .routes(routes!(settings, set_settings))
}

/// A support ticket: what a person asked a chat bot, from which chat, and where it is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketView {
    pub ticket_id: Uuid,
    /// The short id people see in the bot's answers (the id's last eight hex digits).
    #[schema(example = "9c1e4b2a")]
    pub ticket: String,
    #[schema(value_type = crate::schema::TicketStateName)]
    pub state: TicketState,
    /// The chat channel the person wrote on; replies go back there.
    #[schema(value_type = crate::schema::ChannelName)]
    pub channel: Channel,
    /// The tenant's id for the person; `null` once the person was deleted.
    pub user_id: Option<String>,
    /// The name the chat showed for the person, if it showed one.
    pub display_name: Option<String>,
    /// What the person wrote.
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Who closed it: `api-key:<id>` or `jwt:<sub>`.
    pub closed_by: Option<String>,
    /// The message that told the staff (`GET /messages/{messageId}`); `null` when the tenant
    /// chose no staff subscription.
    pub message_id: Option<Uuid>,
    /// The staff's replies, oldest first (only when one ticket is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replies: Option<Vec<ReplyView>>,
}

impl From<Ticket> for TicketView {
    fn from(t: Ticket) -> Self {
        TicketView {
            ticket_id: t.id,
            ticket: short_id(&t.id),
            state: t.state,
            channel: t.channel,
            user_id: t.user_external_id,
            display_name: t.display_name,
            text: t.body,
            created_at: t.created_at,
            modified_at: t.updated_at,
            closed_at: t.closed_at,
            closed_by: t.closed_by,
            message_id: t.message_id,
            replies: None,
        }
    }
}

/// One staff reply, as it was sent to the person's chat.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplyView {
    pub reply_id: Uuid,
    pub text: String,
    /// Who wrote it: `api-key:<id>` or `jwt:<sub>`.
    pub author: String,
    pub created_at: DateTime<Utc>,
}

impl From<Reply> for ReplyView {
    fn from(r: Reply) -> Self {
        ReplyView {
            reply_id: r.id,
            text: r.body,
            author: r.author,
            created_at: r.created_at,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TicketQuery {
    /// Only tickets in this state.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::TicketStateName>)]
    pub state: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::CursorText>)]
    pub cursor: Option<String>,
}

/// A staff reply. It goes to the person's chat as "Support (ticket …):" followed by `text`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplyRequest {
    #[schema(value_type = crate::schema::SupportReplyText)]
    pub text: String,
}

/// Which subscription tells the staff about new tickets.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SupportSettings {
    /// The subscription whose registrations (the staff) hear of every new ticket, through
    /// its templates (they get `ticketId`, `ticket`, `text`, `userId`, `channel` and
    /// `displayName`); `null`: tickets are only listed here.
    #[serde(deserialize_with = "present")]
    #[schema(value_type = Option<crate::schema::SubscriptionIdText>, required = true)]
    pub subscription_id: Option<String>,
}

/// `null` is an answer, a missing field is not: leaving `subscriptionId` out must not
/// silently stop the staff's notifications.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::deserialize(d)
}

/// The tenant in scope, for admins only: the support desk is the tenant's staff's.
fn staff(caller: &Caller) -> Result<Uuid, ApiError> {
    caller.require_admin()?;
    Ok(caller.tenant()?.id)
}

#[utoipa::path(
    get,
    path = "/support/tickets",
    tag = "support",
    operation_id = "list_support_tickets",
    params(TicketQuery),
    responses((status = 200, description = "The tenant's tickets, oldest first", body = Page<TicketView>)),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TicketQuery>,
) -> Result<Json<Page<TicketView>>, ApiError> {
    let tenant_id = staff(&caller)?;
    let wanted = query
        .state
        .as_deref()
        .map(|s| {
            s.parse::<TicketState>()
                .map_err(|_| ApiError::invalid("state", "must be open, answered or closed"))
        })
        .transpose()?;
    let page = Paging {
        limit: query.limit,
        cursor: query.cursor,
    }
    .request()?;
    let tickets = support::list(&state.pool, tenant_id, wanted, page).await?;
    Ok(Json(tickets.map(Into::into)))
}

#[utoipa::path(
    get,
    path = "/support/tickets/{ticket_id}",
    tag = "support",
    operation_id = "read_support_ticket",
    params(("ticket_id" = Uuid, Path, description = "The ticket's id")),
    responses((status = 200, description = "The ticket with its replies", body = TicketView)),
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<TicketView>, ApiError> {
    let tenant_id = staff(&caller)?;
    let ticket = support::by_id(&state.pool, tenant_id, id)
        .await
        .map_err(not_found_as("ticket"))?;
    let replies = support::replies(&state.pool, tenant_id, id).await?;
    let mut view = TicketView::from(ticket);
    view.replies = Some(replies.into_iter().map(Into::into).collect());
    Ok(Json(view))
}

/// Answers a ticket: the reply is recorded and sent to the person's chat. A closed ticket
/// stays closed, but the reply is still sent.
#[utoipa::path(
    post,
    path = "/support/tickets/{ticket_id}/replies",
    tag = "support",
    operation_id = "reply_to_support_ticket",
    params(("ticket_id" = Uuid, Path, description = "The ticket's id")),
    request_body = ReplyRequest,
    responses((status = 201, description = "Recorded; on its way to the person's chat", body = ReplyView)),
)]
async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReplyRequest>,
) -> Result<(StatusCode, Json<ReplyView>), ApiError> {
    answer(&state, &caller, id, &body.text).await
}

/// The same as `POST /support/tickets/{ticket_id}/replies`, at the path R53 names.
#[utoipa::path(
    post,
    path = "/support/{ticket_id}/replies",
    tag = "support",
    operation_id = "reply_to_support_ticket_short",
    params(("ticket_id" = Uuid, Path, description = "The ticket's id")),
    request_body = ReplyRequest,
    responses((status = 201, description = "Recorded; on its way to the person's chat", body = ReplyView)),
)]
async fn reply_short(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReplyRequest>,
) -> Result<(StatusCode, Json<ReplyView>), ApiError> {
    answer(&state, &caller, id, &body.text).await
}

/// The reply and its chat answer, in one transaction.
async fn answer(
    state: &AppState,
    caller: &Caller,
    ticket_id: Uuid,
    text: &str,
) -> Result<(StatusCode, Json<ReplyView>), ApiError> {
    let tenant_id = staff(caller)?;
    check_message("text", text, MAX_REPLY_CHARS)?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let ticket = support::by_id(&mut *tx, tenant_id, ticket_id)
        .await
        .map_err(not_found_as("ticket"))?;
    // The chat was parsed when the bot reported it; one that no longer parses is a bug
    // (or a hand-edited row), not something the caller can fix.
    let chat = Address::from_kind(ticket.chat_kind, &ticket.chat).map_err(|error| {
        tracing::error!(%ticket_id, %error, "a ticket's chat does not parse");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "the ticket's chat address is not valid; nothing was sent",
        )
    })?;
    let reply = support::reply(&mut tx, tenant_id, ticket_id, text, &caller.actor)
        .await
        .map_err(not_found_as("ticket"))?;
    // The reply's id: the bot drops a repeat of the same answer.
    let chat_answer = ChatAnswer::new(
        reply.id,
        chat,
        Answer::SupportReply {
            ticket_id,
            text: text.to_owned(),
        },
    );
    outbox::enqueue_chat_answer(&mut tx, &state.names.events_exchange(), &chat_answer).await?;
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(%ticket_id, reply_id = %reply.id, actor = %caller.actor, "support ticket answered");
    Ok((StatusCode::CREATED, Json(reply.into())))
}

/// Closes a ticket. Closing a closed one again answers 204 and keeps the first closing.
#[utoipa::path(
    post,
    path = "/support/tickets/{ticket_id}/close",
    tag = "support",
    operation_id = "close_support_ticket",
    params(("ticket_id" = Uuid, Path, description = "The ticket's id")),
    responses((status = 204, description = "Closed")),
)]
async fn close(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let tenant_id = staff(&caller)?;
    support::close(&state.pool, tenant_id, id, &caller.actor)
        .await
        .map_err(not_found_as("ticket"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/support/settings",
    tag = "support",
    operation_id = "read_support_settings",
    responses((status = 200, body = SupportSettings)),
)]
async fn settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SupportSettings>, ApiError> {
    let tenant_id = staff(&caller)?;
    let subscription = support::staff_subscription(&state.pool, tenant_id).await?;
    Ok(Json(SupportSettings {
        subscription_id: subscription.map(|s| s.key),
    }))
}

/// Chooses the subscription that tells the staff about new tickets, or with `null` none.
/// A system subscription only the global admin chooses: every ticket fires it.
#[utoipa::path(
    put,
    path = "/support/settings",
    tag = "support",
    operation_id = "set_support_settings",
    request_body = SupportSettings,
    responses((status = 200, body = SupportSettings)),
)]
async fn set_settings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SupportSettings>,
) -> Result<Json<SupportSettings>, ApiError> {
    let tenant_id = staff(&caller)?;
    let subscription = match body.subscription_id.as_deref() {
        None => None,
        Some(raw) => {
            let subscription = find(&state, &caller, raw).await.map_err(|e| {
                if e.status == StatusCode::NOT_FOUND {
                    ApiError::invalid(
                        "subscriptionId",
                        "no such subscription in the tenant; create it first",
                    )
                } else {
                    e
                }
            })?;
            may_change(&caller, &subscription)?;
            Some(subscription)
        }
    };
    support::set_staff_subscription(&state.pool, tenant_id, subscription.as_ref().map(|s| s.id))
        .await?;
    Ok(Json(SupportSettings {
        subscription_id: subscription.map(|s| s.key),
    }))
}
