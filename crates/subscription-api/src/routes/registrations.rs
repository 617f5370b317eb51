//! `/registrations` (R12, R16, R17): a user manages only their own; admins all of the tenant's.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::page::Page;
use herald_storage::registrations::{self, Filter, Registration};
use herald_storage::{StoreError, users};
use messaging_core::values::UserId;
use messaging_core::{Address, Channel};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Paging;
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(update, remove))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationView {
    pub registration_id: Uuid,
    pub subscription_id: String,
    pub user_id: String,
    #[schema(value_type = crate::schema::ChannelName)]
    pub channel: Channel,
    pub address: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

impl From<Registration> for RegistrationView {
    fn from(r: Registration) -> Self {
        RegistrationView {
            registration_id: r.id,
            subscription_id: r.subscription_key,
            user_id: r.user_external_id,
            channel: r.channel,
            address: r.address,
            enabled: r.enabled,
            created_at: r.created_at,
            modified_at: r.updated_at,
        }
    }
}

/// Whose registration a request is about: a user acts only for themselves; an admin names
/// the person.
pub fn subscriber(caller: &Caller, requested: Option<&str>) -> Result<UserId, ApiError> {
    let raw = if caller.is_admin() {
        requested.ok_or_else(|| ApiError::invalid("userId", "name the person to subscribe"))?
    } else {
        let own = caller.user_id.as_deref().unwrap_or_default();
        if requested.is_some_and(|r| r != own) {
            return Err(ApiError::forbidden(
                "users manage only their own registrations",
            ));
        }
        own
    };
    UserId::parse(raw).map_err(|e| ApiError::invalid("userId", e.to_string()))
}

/// Whose records a list shows.
pub enum Audience {
    Everyone,
    Person(Uuid),
    /// A person Herald has never seen: they have no records.
    Nobody,
}

impl Audience {
    /// A user sees only their own records; an admin everyone's, or those of the person
    /// `requested` names.
    pub async fn of(
        state: &AppState,
        caller: &Caller,
        tenant_id: Uuid,
        requested: Option<&str>,
    ) -> Result<Audience, ApiError> {
        let person = match (caller.is_admin(), requested) {
            (true, None) => return Ok(Audience::Everyone),
            _ => subscriber(caller, requested)?,
        };
        match users::by_external_id(&state.pool, tenant_id, person.as_str()).await {
            Ok(user) => Ok(Audience::Person(user.id)),
            Err(StoreError::NotFound) => Ok(Audience::Nobody),
            Err(other) => Err(other.into()),
        }
    }
}

pub fn parse_channel(raw: &str) -> Result<Channel, ApiError> {
    raw.parse()
        .map_err(|e: messaging_core::channel::UnknownChannel| {
            ApiError::invalid("channel", e.to_string())
        })
}

/// Channel and address, validated for the channel and normalised (`Ann@Example.ORG` ->
/// `Ann@example.org`, `+41 79 …` -> `+4179…`). A captured (Teams) address is accepted: a
/// registration must name one of the person's own proven addresses anyway, which for Teams
/// means one the bot linked.
pub fn parse_address(channel: &str, address: &str) -> Result<(Channel, String), ApiError> {
    let channel = parse_channel(channel)?;
    let address = Address::parse(channel, address)
        .map_err(|e| ApiError::invalid("address", e.to_string()))?;
    Ok((channel, address.value()))
}

/// Whether the API takes an address of this channel typed in. A Teams address names the Bot
/// Connector that Herald hands its bot token to: only the bot captures one, from an activity
/// the Bot Framework signed, when a person links their chat.
pub fn typed_in(channel: Channel) -> bool {
    channel != Channel::Teams
}

/// A 422 for an address of a channel whose addresses are not typed in ([`typed_in`]).
pub fn refuse_captured(address: &Address) -> Result<(), ApiError> {
    match address.channel() {
        channel if !typed_in(channel) => Err(ApiError::invalid(
            "channel",
            format!(
                "{channel} addresses are captured by the bot when a person links their chat: issue a link code (POST /users/{{userId}}/link-codes)"
            ),
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[serde(default)]
    #[param(value_type = Option<crate::schema::UserIdText>)]
    pub user_id: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::CursorText>)]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/registrations", tag = "registrations", params(ListQuery), responses((status = 200, body = Page<RegistrationView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<RegistrationView>>, ApiError> {
    let tenant = caller.tenant()?;
    let paging = Paging {
        limit: query.limit,
        cursor: query.cursor,
    }
    .request()?;
    let mut filter = Filter::default();
    match Audience::of(&state, &caller, tenant.id, query.user_id.as_deref()).await? {
        Audience::Everyone => {}
        Audience::Person(id) => filter.user_id = Some(id),
        Audience::Nobody => return Ok(Json(Page::empty())),
    }
    Ok(Json(
        registrations::list(&state.pool, tenant.id, filter, paging)
            .await?
            .map(Into::into),
    ))
}

/// The registration, if the caller may touch it; 404 otherwise (other tenants' and other
/// people's registrations look alike).
async fn owned(state: &AppState, caller: &Caller, id: Uuid) -> Result<Registration, ApiError> {
    let tenant = caller.tenant()?;
    let registration = registrations::by_id(&state.pool, tenant.id, id)
        .await
        .map_err(not_found_as("registration"))?;
    if !caller.is_admin()
        && caller.user_id.as_deref() != Some(registration.user_external_id.as_str())
    {
        return Err(ApiError::not_found("registration"));
    }
    Ok(registration)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationChange {
    /// `false` pauses it without unsubscribing (R12).
    pub enabled: bool,
}

#[utoipa::path(put, path = "/registrations/{registration_id}", tag = "registrations", params(("registration_id" = Uuid, Path)), request_body = RegistrationChange, responses((status = 200, body = RegistrationView)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RegistrationChange>,
) -> Result<Json<RegistrationView>, ApiError> {
    let registration = owned(&state, &caller, id).await?;
    registrations::set_enabled(&state.pool, registration.tenant_id, id, body.enabled).await?;
    Ok(Json(
        registrations::by_id(&state.pool, registration.tenant_id, id)
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/registrations/{registration_id}", tag = "registrations", params(("registration_id" = Uuid, Path)), responses((status = 204, description = "Removed")))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let registration = owned(&state, &caller, id).await?;
    registrations::delete(&state.pool, registration.tenant_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
