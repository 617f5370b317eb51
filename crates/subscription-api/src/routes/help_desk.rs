//! `/help-desk/rooms` (R31-R36): the XMPP help-desk rooms, for the tenant's web application.
//!
//! The XMPP bot keeps a pool of free rooms (shared by every tenant) and reports each room's
//! states, which the router stores. Here the web application hands rooms out: a free room to
//! a staff member (R32), then to a client the room whose staff member has waited longest
//! (R33). Each answer carries the room's JID and password for the person's XMPP client.
//!
//! Admins only (a tenant admin, or a global admin with `Herald-Tenant`), like the support
//! desk: a room's password lets anyone in, so only the tenant's own backend hands rooms out,
//! never a person's own key. A user gets 403.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::page::Page;
use herald_storage::rooms::{self, Room, RoomHistoryEntry};
use herald_storage::{StoreError, outbox, support};
use messaging_core::events::TicketRoom;
use messaging_core::topology::routing;
use messaging_core::values::{Jid, UserId};
use messaging_core::{EnvelopeVersion, RoomChangeKind, RoomState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Paging;
use crate::auth::Caller;
use crate::error::{ApiError, Problem, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(for_staff))
        .routes(routes!(for_ticket))
        .routes(routes!(for_client))
        .routes(routes!(list))
        .routes(routes!(read))
}

/// The problem type of an empty pool (503, with `Retry-After`).
pub const NO_FREE_ROOM: &str = "tag:herald,2026:no-free-room";
/// The problem type of a client for whom no staff member waits (409).
pub const NO_STAFF_AVAILABLE: &str = "tag:herald,2026:no-staff-available";
/// How soon to ask again for a free room: the bot refills the pool as rooms are taken (R35),
/// a room at a time, each in about a second.
pub const RETRY_AFTER_SECS: u64 = 5;

/// A help-desk room: where to go (JID and password) and where it is in its life.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomView {
    pub id: Uuid,
    /// The room's bare JID, to join with any XMPP client.
    #[schema(example = "herald-3f9c1e@conference.example.org")]
    pub jid: String,
    /// The room's password. `null` once the room is closed (it no longer exists).
    pub password: Option<String>,
    #[schema(value_type = crate::schema::RoomStateName)]
    pub state: RoomState,
    /// The web application's id for the staff member it was reserved for.
    pub staff: Option<String>,
    /// The web application's id for the client it was given to.
    pub client: Option<String>,
    /// When the bot created it for the pool.
    pub created_at: DateTime<Utc>,
    pub reserved_at: Option<DateTime<Utc>>,
    /// When the staff member came in (R33 gives clients the longest wait first).
    pub staff_waiting_since: Option<DateTime<Utc>>,
    pub client_assigned_at: Option<DateTime<Utc>>,
    pub state_changed_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The support ticket the room was reserved to answer, if any.
    pub ticket_id: Option<Uuid>,
    /// Every change, in the order it happened (only when one room is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<RoomChangeView>>,
}

impl From<Room> for RoomView {
    fn from(r: Room) -> Self {
        RoomView {
            id: r.id,
            jid: r.room_jid,
            password: (!r.state.is_final()).then_some(r.password),
            state: r.state,
            staff: r.staff_ref,
            client: r.client_ref,
            created_at: r.created_at,
            reserved_at: r.reserved_at,
            staff_waiting_since: r.staff_waiting_since,
            client_assigned_at: r.client_assigned_at,
            state_changed_at: r.state_changed_at,
            closed_at: r.closed_at,
            ticket_id: r.ticket_id,
            history: None,
        }
    }
}

/// One entry of a room's history (R36).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomChangeView {
    #[schema(value_type = crate::schema::RoomChangeKindName)]
    pub kind: RoomChangeKind,
    /// The state it is about: `free` when created, `reserved`, or the state the bot reported;
    /// `null` for `client_assigned` and `refused`.
    #[schema(value_type = Option<crate::schema::RoomStateName>)]
    pub state: Option<RoomState>,
    /// The nickname of who came in, left or was refused, as the bot reported it.
    pub occupant: Option<String>,
    /// `false`: a state the bot reported that did not become the room's state (it arrived
    /// after a later one, or after the room was closed).
    pub applied: bool,
    pub at: DateTime<Utc>,
}

impl From<RoomHistoryEntry> for RoomChangeView {
    fn from(e: RoomHistoryEntry) -> Self {
        RoomChangeView {
            kind: e.kind,
            state: e.state,
            occupant: e.occupant,
            applied: e.applied,
            at: e.occurred_at,
        }
    }
}

/// A free room for a staff member.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaffRequest {
    /// The web application's id for the staff member (not checked against Herald's people).
    #[schema(value_type = crate::schema::UserIdText)]
    pub staff: String,
}

/// A chat for a client.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientRequest {
    /// The web application's id for the client (not checked against Herald's people).
    #[schema(value_type = crate::schema::UserIdText)]
    pub client: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RoomQuery {
    /// Only rooms in this state (`closed` for the history).
    #[serde(default)]
    #[param(value_type = Option<crate::schema::RoomStateName>)]
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

/// The tenant in scope, for admins only (see the module's doc).
fn desk(caller: &Caller) -> Result<Uuid, ApiError> {
    caller.require_admin()?;
    Ok(caller.tenant()?.id)
}

fn person(field: &str, raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// R32: reserves the oldest free room of the pool for the staff member. The staff member
/// joins first; the room becomes `staff_waiting` when the bot sees them come in.
#[utoipa::path(
    post,
    path = "/help-desk/rooms/staff",
    tag = "help-desk",
    operation_id = "reserve_help_desk_room",
    request_body = StaffRequest,
    responses(
        (status = 201, description = "Reserved for the staff member: join it with the JID and password", body = RoomView),
        (status = 503, description = "No free room: the pool is empty (problem type `tag:herald,2026:no-free-room`); ask again after `Retry-After` seconds. Also a database outage (`about:blank`).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the pool has likely been refilled (only for an empty pool)"))),
    ),
)]
async fn for_staff(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<StaffRequest>,
) -> Result<(StatusCode, Json<RoomView>), ApiError> {
    let tenant_id = desk(&caller)?;
    let staff = person("staff", &body.staff)?;
    let Some(room) = rooms::reserve(&state.pool, tenant_id, staff.as_str()).await? else {
        tracing::warn!(%tenant_id, "no free help-desk room for a staff member: the pool is empty");
        return Err(no_free_room());
    };
    tracing::info!(room_id = %room.id, room = %room.room_jid, actor = %caller.actor, "help-desk room reserved for a staff member");
    Ok((StatusCode::CREATED, Json(room.into())))
}

fn no_free_room() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "No free room",
        format!(
            "every help-desk room is taken; the XMPP bot refills the pool, try again in {RETRY_AFTER_SECS} s"
        ),
    )
    .with_type(NO_FREE_ROOM)
    .with_retry_after(RETRY_AFTER_SECS)
}

/// R53: reserves a free room for a staff member to answer a support ticket in. The XMPP bot
/// posts the ticket into the room when the staff member comes in, and sends what they write
/// there to the person's chat as the ticket's replies. The person stays on their own chat:
/// the room is never given to a client.
#[utoipa::path(
    post,
    path = "/support/tickets/{ticket_id}/room",
    tag = "help-desk",
    operation_id = "reserve_help_desk_room_for_ticket",
    params(("ticket_id" = Uuid, Path, description = "The ticket's id")),
    request_body = StaffRequest,
    responses(
        (status = 201, description = "Reserved for the staff member: join it with the JID and password; what they write there answers the ticket", body = RoomView),
        (status = 404, description = "No such ticket in the tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No free room (problem type `tag:herald,2026:no-free-room`); ask again after `Retry-After` seconds.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the pool has likely been refilled (only for an empty pool)"))),
    ),
)]
async fn for_ticket(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ticket_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<StaffRequest>,
) -> Result<(StatusCode, Json<RoomView>), ApiError> {
    let tenant_id = desk(&caller)?;
    let staff = person("staff", &body.staff)?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let ticket = support::by_id(&mut *tx, tenant_id, ticket_id)
        .await
        .map_err(not_found_as("ticket"))?;
    let Some(room) =
        rooms::reserve_for_ticket(&mut *tx, tenant_id, staff.as_str(), ticket_id).await?
    else {
        tracing::warn!(%tenant_id, %ticket_id, "no free help-desk room for a ticket: the pool is empty");
        return Err(no_free_room());
    };
    let (Ok(bot), Ok(room_jid)) = (Jid::parse(&room.bot_jid), Jid::parse(&room.room_jid)) else {
        // Stored from parsed JIDs by the router: a hand-edited row.
        tracing::error!(room = %room.room_jid, bot = %room.bot_jid, "a stored room or bot JID does not parse");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "the room's stored JID is not valid; nothing was reserved",
        ));
    };
    // To the bot in the reservation's transaction: a room of the ticket is always relayed.
    let command = TicketRoom {
        version: EnvelopeVersion,
        bot,
        room: room_jid,
        ticket_id,
        channel: ticket.channel,
        display_name: ticket.display_name.clone(),
        text: ticket.body.clone(),
        created_at: Utc::now(),
    };
    let payload = serde_json::to_vec(&command).map_err(|e| StoreError::Invalid(e.to_string()))?;
    outbox::enqueue(
        &mut tx,
        &state.names.events_exchange(),
        routing::TICKET,
        &format!("ticket-room/{}/{ticket_id}", room.room_jid),
        &payload,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(room_id = %room.id, room = %room.room_jid, %ticket_id, actor = %caller.actor, "help-desk room reserved to answer a support ticket");
    Ok((StatusCode::CREATED, Json(room.into())))
}

/// R33: gives the client the tenant's room whose staff member has waited longest (state
/// `staff_waiting`, no client yet). Concurrent requests each get another room.
#[utoipa::path(
    post,
    path = "/help-desk/rooms/client",
    tag = "help-desk",
    operation_id = "assign_help_desk_room",
    request_body = ClientRequest,
    responses(
        (status = 200, description = "The room of the staff member who waited longest: join it with the JID and password", body = RoomView),
        (status = 409, description = "No staff member of the tenant waits for a client (problem type `tag:herald,2026:no-staff-available`)",
            body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn for_client(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ClientRequest>,
) -> Result<Json<RoomView>, ApiError> {
    let tenant_id = desk(&caller)?;
    let client = person("client", &body.client)?;
    let Some(room) = rooms::assign_client(&state.pool, tenant_id, client.as_str()).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "No staff available",
            "no staff member of the tenant waits in a help-desk room; try again later",
        )
        .with_type(NO_STAFF_AVAILABLE));
    };
    tracing::info!(room_id = %room.id, room = %room.room_jid, actor = %caller.actor, "help-desk room given to a client");
    Ok(Json(room.into()))
}

#[utoipa::path(
    get,
    path = "/help-desk/rooms",
    tag = "help-desk",
    operation_id = "list_help_desk_rooms",
    params(RoomQuery),
    responses((status = 200, description = "The tenant's rooms, current and closed, in creation order (closed ones without their password)", body = Page<RoomView>)),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<RoomQuery>,
) -> Result<Json<Page<RoomView>>, ApiError> {
    let tenant_id = desk(&caller)?;
    let wanted = query
        .state
        .as_deref()
        .map(|s| {
            s.parse::<RoomState>().map_err(|_| {
                ApiError::invalid(
                    "state",
                    "must be free, reserved, staff_waiting, chatting, staff_left, client_left or closed",
                )
            })
        })
        .transpose()?;
    let page = Paging {
        limit: query.limit,
        cursor: query.cursor,
    }
    .request()?;
    let found = rooms::list(&state.pool, tenant_id, wanted, page).await?;
    Ok(Json(found.map(Into::into)))
}

#[utoipa::path(
    get,
    path = "/help-desk/rooms/{room_id}",
    tag = "help-desk",
    operation_id = "read_help_desk_room",
    params(("room_id" = Uuid, Path, description = "The room's id")),
    responses((status = 200, description = "The room with its history", body = RoomView)),
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<RoomView>, ApiError> {
    let tenant_id = desk(&caller)?;
    let room = rooms::by_id(&state.pool, tenant_id, id)
        .await
        .map_err(not_found_as("room"))?;
    let history = rooms::history(&state.pool, tenant_id, id).await?;
    let mut view = RoomView::from(room);
    view.history = Some(history.into_iter().map(Into::into).collect());
    Ok(Json(view))
}
