//! `/users` (R1, R2, R12, R16, R17): people by the tenant's own id for them, their delivery
//! settings and their addresses. A user manages their own; admins anyone's in the tenant.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use herald_storage::StoreError;
use herald_storage::addresses::{self, AddressRow, NewAddress};
use herald_storage::page::Page;
use herald_storage::users::{self, Settings, User};
use messaging_core::Address;
use messaging_core::ingress::DeliveryMode;
use messaging_core::values::{Jid, Locale, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Paging;
use super::registrations::{parse_channel, subscriber};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(list))
        .route("/users/{user_id}", get(read).put(put).delete(remove))
        .route("/users/{user_id}/addresses", post(add_address))
        .route(
            "/users/{user_id}/addresses/{address_id}",
            delete(remove_address),
        )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub locale: Option<String>,
    pub preferred_channel: Option<String>,
    pub delivery_mode: String,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<AddressView>>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            user_id: u.external_id,
            locale: u.locale,
            preferred_channel: u.preferred_channel,
            delivery_mode: u.delivery_mode,
            created_at: u.created_at,
            modified_at: u.updated_at,
            addresses: None,
        }
    }
}

/// One address with its reachability (R3, R6): `active`, `unreachable` or `removed`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressView {
    pub address_id: Uuid,
    pub channel: String,
    pub kind: String,
    pub address: String,
    pub display_name: Option<String>,
    pub verified: bool,
    pub state: String,
    pub state_reason: Option<String>,
    pub state_changed_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub failure_count: i32,
    pub created_at: DateTime<Utc>,
}

impl From<AddressRow> for AddressView {
    fn from(a: AddressRow) -> Self {
        AddressView {
            address_id: a.id,
            channel: a.channel,
            kind: a.kind,
            address: a.value,
            display_name: a.display_name,
            verified: a.verified,
            state: a.state,
            state_reason: a.state_reason,
            state_changed_at: a.state_changed_at,
            last_success_at: a.last_success_at,
            failure_count: a.failure_count,
            created_at: a.created_at,
        }
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<UserView>>, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    Ok(Json(
        users::list(&state.pool, tenant.id, paging.request()?)
            .await?
            .map(Into::into),
    ))
}

/// The person the path names, if this caller may act for them.
fn person(caller: &Caller, raw: &str) -> Result<UserId, ApiError> {
    subscriber(caller, Some(raw))
}

async fn find(state: &AppState, caller: &Caller, person: &UserId) -> Result<User, ApiError> {
    let tenant = caller.tenant()?;
    users::by_external_id(&state.pool, tenant.id, person.as_str())
        .await
        .map_err(not_found_as("user"))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let person = person(&caller, &raw)?;
    let user = find(&state, &caller, &person).await?;
    let addresses = addresses::for_user(&state.pool, user.tenant_id, user.id).await?;
    let mut view = UserView::from(user);
    view.addresses = Some(addresses.into_iter().map(Into::into).collect());
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSettings {
    #[serde(default)]
    pub locale: Option<String>,
    /// The channel used when delivering only on the preferred one (R2).
    #[serde(default)]
    pub preferred_channel: Option<String>,
    /// `all` (default) or `preferred`.
    #[serde(default)]
    pub delivery_mode: Option<DeliveryMode>,
}

/// Creates the person, or replaces their settings.
async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<UserSettings>,
) -> Result<Json<UserView>, ApiError> {
    let person = person(&caller, &raw)?;
    let tenant = caller.tenant()?;
    let locale = body
        .locale
        .as_deref()
        .map(|l| Locale::parse(l).map_err(|e| ApiError::invalid("locale", e.to_string())))
        .transpose()?;
    let preferred = body
        .preferred_channel
        .as_deref()
        .map(|c| {
            parse_channel(c).map_err(|mut e| {
                e.field = Some("preferredChannel".into());
                e
            })
        })
        .transpose()?;
    let mode = match body.delivery_mode.unwrap_or(DeliveryMode::All) {
        DeliveryMode::All => "all",
        DeliveryMode::Preferred if preferred.is_none() => {
            return Err(ApiError::invalid(
                "preferredChannel",
                "delivering on the preferred channel needs one",
            ));
        }
        DeliveryMode::Preferred => "preferred",
    };
    let user = users::put(
        &state.pool,
        tenant.id,
        person.as_str(),
        Settings {
            locale: locale.as_ref().map(|l| l.as_str()),
            preferred_channel: preferred.map(|c| c.as_str()),
            delivery_mode: mode,
        },
    )
    .await?;
    Ok(Json(user.into()))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let person = person(&caller, &raw)?;
    let tenant = caller.tenant()?;
    users::delete(&state.pool, tenant.id, person.as_str())
        .await
        .map_err(not_found_as("user"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewAddressRequest {
    pub channel: String,
    pub address: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// For `xmpp`: the address is a multi-user-chat room, not a person's JID (R37).
    #[serde(default)]
    pub room: bool,
}

/// Adds an address to a person, creating the person on first mention. Chat addresses
/// (Telegram, Discord) normally arrive through the bots' link codes (R5) instead.
async fn add_address(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<NewAddressRequest>,
) -> Result<(StatusCode, Json<AddressView>), ApiError> {
    let person = person(&caller, &raw)?;
    let tenant = caller.tenant()?;
    let channel = parse_channel(&body.channel)?;
    let address = if body.room {
        if channel != messaging_core::Channel::Xmpp {
            return Err(ApiError::invalid(
                "room",
                "only XMPP addresses can be rooms",
            ));
        }
        Address::XmppRoom(
            Jid::parse(&body.address).map_err(|e| ApiError::invalid("address", e.to_string()))?,
        )
    } else {
        Address::parse(channel, &body.address)
            .map_err(|e| ApiError::invalid("address", e.to_string()))?
    };
    if let Some(name) = &body.display_name {
        super::check_text("displayName", name, 200)?;
    }
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let user = users::ensure(&mut *tx, tenant.id, person.as_str()).await?;
    let value = address.value();
    let (row, created) = addresses::add(
        &mut *tx,
        NewAddress {
            tenant_id: tenant.id,
            user_id: user.id,
            channel: channel.as_str(),
            kind: address.kind(),
            value: &value,
            display_name: body.display_name.as_deref(),
        },
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(row.into())))
}

async fn remove_address(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((raw, address_id)): ApiPath<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let person = person(&caller, &raw)?;
    let user = find(&state, &caller, &person).await?;
    addresses::delete(&state.pool, user.tenant_id, user.id, address_id)
        .await
        .map_err(not_found_as("address"))?;
    Ok(StatusCode::NO_CONTENT)
}
