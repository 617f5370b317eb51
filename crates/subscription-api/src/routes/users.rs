//! `/users` (R1, R2, R12, R16, R17): people by the tenant's own id for them, their delivery
//! settings and their addresses. A user manages their own; admins anyone's in the tenant.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::StoreError;
use herald_storage::addresses::{self, AddressRow, NewAddress};
use herald_storage::link_codes;
use herald_storage::page::Page;
use herald_storage::tenants;
use herald_storage::users::{self, Settings, User};
use herald_storage::verification::{self, Proof};
use messaging_core::ingress::DeliveryMode;
use messaging_core::values::{Jid, Locale, UserId};
use messaging_core::{Address, AddressKind, AddressState, Channel};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Paging;
use super::registrations::{parse_channel, subscriber};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read, put, remove))
        .routes(routes!(add_address))
        .routes(routes!(remove_address))
        .routes(routes!(issue_link_code))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub locale: Option<String>,
    #[schema(value_type = Option<crate::schema::ChannelName>)]
    pub preferred_channel: Option<Channel>,
    #[schema(value_type = crate::schema::DeliveryModeName)]
    pub delivery_mode: DeliveryMode,
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
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressView {
    pub address_id: Uuid,
    #[schema(value_type = crate::schema::ChannelName)]
    pub channel: Channel,
    #[schema(value_type = crate::schema::AddressKindName)]
    pub kind: AddressKind,
    pub address: String,
    pub display_name: Option<String>,
    /// Proven to be the person's: only proven addresses get anything but the proof itself.
    pub verified: bool,
    /// How: `code` (a code or link sent to it was confirmed), `link` (a chat bot captured
    /// it), `import` (an admin vouched for it), `tenant` (a WebSocket key), `migration`.
    pub verified_how: Option<String>,
    pub verified_at: Option<DateTime<Utc>>,
    /// Present when this request sent a code to prove the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::verification::CodeSent>,
    #[schema(value_type = crate::schema::AddressStateName)]
    pub state: AddressState,
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
            verified_how: a.verified_how,
            verified_at: a.verified_at,
            verification: None,
            state: a.state,
            state_reason: a.state_reason,
            state_changed_at: a.state_changed_at,
            last_success_at: a.last_success_at,
            failure_count: a.failure_count,
            created_at: a.created_at,
        }
    }
}

#[utoipa::path(get, path = "/users", tag = "users", params(super::Paging), responses((status = 200, body = Page<UserView>)))]
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
pub(super) fn person(caller: &Caller, raw: &str) -> Result<UserId, ApiError> {
    subscriber(caller, Some(raw))
}

pub(super) async fn find(
    state: &AppState,
    caller: &Caller,
    person: &UserId,
) -> Result<User, ApiError> {
    let tenant = caller.tenant()?;
    users::by_external_id(&state.pool, tenant.id, person.as_str())
        .await
        .map_err(not_found_as("user"))
}

#[utoipa::path(get, path = "/users/{user_id}", tag = "users", params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person")), responses((status = 200, description = "The person with their addresses", body = UserView)))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSettings {
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::LocaleText>)]
    pub locale: Option<String>,
    /// The channel used when delivering only on the preferred one (R2). Required when
    /// `deliveryMode` is `preferred`.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::ChannelName>)]
    pub preferred_channel: Option<String>,
    /// `all` (default) or `preferred`.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::DeliveryModeName>)]
    pub delivery_mode: Option<DeliveryMode>,
}

/// Creates the person, or replaces their settings.
#[utoipa::path(put, path = "/users/{user_id}", tag = "users", params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person")), request_body = UserSettings, responses((status = 200, description = "Created or updated", body = UserView)))]
async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<UserSettings>,
) -> Result<Json<UserView>, ApiError> {
    let person = person(&caller, &raw)?;
    let tenant = caller.tenant()?;
    let settings = body.parse()?;
    let user = users::put(
        &state.pool,
        tenant.id,
        person.as_str(),
        settings.as_settings(),
    )
    .await?;
    Ok(Json(user.into()))
}

/// [`UserSettings`] checked.
pub(super) struct ParsedSettings {
    locale: Option<Locale>,
    preferred: Option<Channel>,
    mode: DeliveryMode,
}

impl ParsedSettings {
    pub(super) fn as_settings(&self) -> Settings<'_> {
        Settings {
            locale: self.locale.as_ref().map(|l| l.as_str()),
            preferred_channel: self.preferred,
            delivery_mode: self.mode,
        }
    }
}

impl UserSettings {
    pub(super) fn is_empty(&self) -> bool {
        self.locale.is_none() && self.preferred_channel.is_none() && self.delivery_mode.is_none()
    }

    pub(super) fn parse(&self) -> Result<ParsedSettings, ApiError> {
        let locale = self
            .locale
            .as_deref()
            .map(|l| Locale::parse(l).map_err(|e| ApiError::invalid("locale", e.to_string())))
            .transpose()?;
        let preferred = self
            .preferred_channel
            .as_deref()
            .map(|c| {
                parse_channel(c).map_err(|mut e| {
                    e.field = Some("preferredChannel".into());
                    e
                })
            })
            .transpose()?;
        let mode = self.delivery_mode.unwrap_or(DeliveryMode::All);
        if mode == DeliveryMode::Preferred && preferred.is_none() {
            return Err(ApiError::invalid(
                "preferredChannel",
                "delivering on the preferred channel needs one",
            ));
        }
        Ok(ParsedSettings {
            locale,
            preferred,
            mode,
        })
    }
}

#[utoipa::path(delete, path = "/users/{user_id}", tag = "users", params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person")), responses((status = 204, description = "Deleted with their addresses and registrations")))]
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

/// Its schema is [`crate::schema::NewAddressBody`]: the address pattern per channel.
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
    /// An admin vouches that the address is the person's (an import from another system):
    /// it is proven without a code, and the admin is recorded.
    #[serde(default)]
    pub verified: bool,
}

/// How an address being added is proven: `None` when a code must prove it.
fn proof_for(caller: &Caller, address: &Address, import: bool) -> Result<Option<Proof>, ApiError> {
    let channel = address.channel();
    if import {
        if !caller.is_admin() {
            return Err(ApiError::forbidden(
                "only an admin adds addresses as verified; a person proves theirs with the code Herald sends",
            ));
        }
        super::registrations::refuse_captured(address)?;
        return Ok(Some(Proof::Import));
    }
    match channel {
        Channel::Websocket if caller.is_admin() => Ok(Some(Proof::Tenant)),
        Channel::Websocket => Err(ApiError::forbidden(
            "WebSocket addresses name the tenant's own clients: an admin adds them",
        )),
        Channel::Telegram | Channel::Discord | Channel::Teams => Err(ApiError::invalid(
            "channel",
            format!(
                "{channel} addresses come from the bot when the person links their chat: issue a link code (POST /users/{{userId}}/link-codes); an admin importing known chats sets `verified: true`"
            ),
        )),
        Channel::Email | Channel::Sms | Channel::Xmpp => Ok(None),
    }
}

/// Adds an address to a person, creating the person on first mention. An email, SMS or
/// XMPP address is unproven until the person confirms the code (a link for email) Herald
/// sends to it; nothing else reaches it before. Chat addresses (Telegram, Discord, Teams)
/// arrive through the bots' link codes (R5); an admin may import addresses as verified.
#[utoipa::path(post, path = "/users/{user_id}/addresses", tag = "users", params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person")), request_body = crate::schema::NewAddressBody, responses((status = 201, body = AddressView), (status = 200, description = "Known already; a code went to it again unless it is proven and in service", body = AddressView), (status = 429, description = "Too many verification messages to this address or from this tenant")))]
async fn add_address(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<NewAddressRequest>,
) -> Result<(StatusCode, Json<AddressView>), ApiError> {
    let person = person(&caller, &raw)?;
    let tenant = caller.tenant()?;
    let checked = body.check(&caller)?;
    let tenant = tenants::by_id(&state.pool, tenant.id).await?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let user = users::ensure(&mut *tx, tenant.id, person.as_str()).await?;
    let (view, created) = add_checked(&state, &caller, &mut tx, &tenant, &user, &checked).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// A [`NewAddressRequest`] that passed the checks needing no database.
pub(super) struct CheckedAddress {
    address: Address,
    proof: Option<Proof>,
    display_name: Option<String>,
}

impl NewAddressRequest {
    pub(super) fn check(&self, caller: &Caller) -> Result<CheckedAddress, ApiError> {
        let channel = parse_channel(&self.channel)?;
        let address = if self.room {
            if channel != messaging_core::Channel::Xmpp {
                return Err(ApiError::invalid(
                    "room",
                    "only XMPP addresses can be rooms",
                ));
            }
            Address::XmppRoom(
                Jid::parse(&self.address)
                    .map_err(|e| ApiError::invalid("address", e.to_string()))?,
            )
        } else {
            Address::parse(channel, &self.address)
                .map_err(|e| ApiError::invalid("address", e.to_string()))?
        };
        let proof = proof_for(caller, &address, self.verified)?;
        if let Some(name) = &self.display_name {
            super::check_text("displayName", name, 200)?;
        }
        Ok(CheckedAddress {
            address,
            proof,
            display_name: self.display_name.clone(),
        })
    }
}

/// Adds a checked address to `user` in `tx`: the per-channel cap, the SMS countries, and
/// the proof (an import or a tenant's WebSocket client is proven at once; otherwise a code
/// goes to it unless it is proven and in service already). Whether it is new.
pub(super) async fn add_checked(
    state: &AppState,
    caller: &Caller,
    tx: &mut sqlx::PgConnection,
    tenant: &tenants::Tenant,
    user: &User,
    checked: &CheckedAddress,
) -> Result<(AddressView, bool), ApiError> {
    let address = &checked.address;
    let value = address.value();
    if address.channel() == Channel::Sms {
        state.verifier.check_sms_destination(tenant, &value)?;
    }
    let known = addresses::by_value(&mut *tx, user.id, address.channel(), &value).await?;
    if known.is_none() {
        let cap = state.verifier.addresses_per_channel;
        if addresses::count_on_channel(&mut *tx, user.id, address.channel()).await? >= cap {
            return Err(ApiError::invalid(
                "address",
                format!(
                    "this person has {cap} {} addresses, the most one may have; remove one first",
                    address.channel()
                ),
            ));
        }
    }
    let (row, created) = addresses::add(
        &mut *tx,
        NewAddress {
            tenant_id: tenant.id,
            user_id: user.id,
            kind: address.kind(),
            value: &value,
            display_name: checked.display_name.as_deref(),
        },
    )
    .await?;
    let in_service = row.verified && row.state == AddressState::Active;
    let mut code = None;
    match checked.proof {
        Some(proof) if !in_service => {
            verification::mark_verified(tx, row.id, proof, &caller.actor).await?;
            tracing::info!(address_id = %row.id, how = proof.as_str(), actor = %caller.actor, "address verified without a code");
        }
        Some(_) => {}
        // Adding it again proves nothing: a code goes to it, and until that is confirmed an
        // address found unreachable or removed stays so.
        None if !in_service => {
            code = Some(
                state
                    .verifier
                    .send(tx, &state.names, tenant, user, &row, &caller.actor)
                    .await?,
            );
        }
        None => {}
    }
    let row = addresses::by_id(&mut *tx, tenant.id, user.id, row.id).await?;
    let mut view = AddressView::from(row);
    view.verification = code;
    Ok((view, created))
}

#[utoipa::path(delete, path = "/users/{user_id}/addresses/{address_id}", tag = "users", params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person"), ("address_id" = Uuid, Path)), responses((status = 204, description = "Removed")))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkCodeRequest {
    /// Only this chat channel may redeem the code (`telegram`, `discord`, `xmpp`); absent: any.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::ChatChannelName>)]
    pub channel: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkCodeView {
    /// Shown only in this response; only its keyed hash is stored. 26 characters.
    #[schema(example = "K7QX2MPAH4RN8DWZ3CYBTE5VGL")]
    pub code: String,
    #[schema(value_type = Option<crate::schema::ChannelName>)]
    pub channel: Option<Channel>,
    pub expires_at: DateTime<Utc>,
    /// What to tell the person.
    pub instructions: String,
}

/// R5: a chat bot reaches a person only after they wrote to it. The person sends this code to
/// the bot (`/start CODE` on Telegram); the bot's sender redeems it, once, before it expires,
/// and that chat becomes one of their addresses.
#[utoipa::path(
    post,
    path = "/users/{user_id}/link-codes",
    tag = "users",
    params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person")),
    request_body(content = LinkCodeRequest, description = "Optional; `{}` for any channel"),
    responses((status = 201, body = LinkCodeView)),
)]
async fn issue_link_code(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<LinkCodeRequest>,
) -> Result<(StatusCode, Json<LinkCodeView>), ApiError> {
    let person = person(&caller, &raw)?;
    let channel = match body.channel.as_deref() {
        Some(raw) => {
            let channel = parse_channel(raw)?;
            if !channel.is_chat() {
                return Err(ApiError::invalid(
                    "channel",
                    format!("{channel} addresses are added directly, not linked with a code"),
                ));
            }
            Some(channel)
        }
        None => None,
    };
    let tenant = caller.tenant()?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let user = users::ensure(&mut *tx, tenant.id, person.as_str()).await?;
    let issued = link_codes::issue(
        &mut tx,
        &state.verifier.link_key,
        tenant.id,
        user.id,
        channel,
        state.link_code_ttl,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let instructions = match channel {
        Some(Channel::Telegram) | None => format!(
            "Send \"/start {}\" to the bot on Telegram, or the code to the bot on another chat service",
            issued.code
        ),
        Some(other) => format!("Send \"{}\" to the bot on {other}", issued.code),
    };
    Ok((
        StatusCode::CREATED,
        Json(LinkCodeView {
            code: issued.code,
            channel: issued.channel,
            expires_at: issued.expires_at,
            instructions,
        }),
    ))
}
