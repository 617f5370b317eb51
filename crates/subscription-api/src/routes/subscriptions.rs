//! `/subscriptions` (R11, R12, R17): admins manage them, everyone in the tenant reads them,
//! and people subscribe themselves on a channel address.
//!
//! Only a global admin creates, changes or deletes a system subscription (R11, R16).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::page::Page;
use herald_storage::registrations::{self, Filter};
use herald_storage::subscriptions::{self, NewSubscription, Subscription, SubscriptionUpdate};
use herald_storage::{StoreError, addresses, users};
use messaging_core::values::{Locale, SubscriptionKey};
use serde::{Deserialize, Serialize};

use super::registrations::{Audience, RegistrationView, subscriber};
use super::{Paging, check_text};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
        .routes(routes!(list_registrations))
        .routes(routes!(subscribe))
        .routes(routes!(unsubscribe))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub subscription_id: String,
    pub label: String,
    pub description: String,
    pub system: bool,
    pub enabled: bool,
    pub fallback_locale: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub modified_at: DateTime<Utc>,
    pub modified_by: String,
}

impl From<Subscription> for SubscriptionView {
    fn from(s: Subscription) -> Self {
        SubscriptionView {
            subscription_id: s.key,
            label: s.label,
            description: s.description,
            system: s.system,
            enabled: s.enabled,
            fallback_locale: s.fallback_locale,
            created_at: s.created_at,
            created_by: s.created_by,
            modified_at: s.updated_at,
            modified_by: s.updated_by,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSubscriptionRequest {
    #[schema(value_type = crate::schema::SubscriptionIdText)]
    pub subscription_id: String,
    #[schema(value_type = crate::schema::LabelText)]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub system: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::LocaleText>)]
    pub fallback_locale: Option<String>,
}

/// PUT sets the label and whatever else it names; omitted fields keep their value (so a
/// relabelling never re-enables a disabled subscription). The id and system flag are fixed.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionChange {
    #[schema(value_type = crate::schema::LabelText)]
    pub label: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::LocaleText>)]
    pub fallback_locale: Option<String>,
}

fn parse_key(raw: &str) -> Result<SubscriptionKey, ApiError> {
    SubscriptionKey::parse(raw).map_err(|e| ApiError::invalid("subscriptionId", e.to_string()))
}

fn parse_locale(raw: Option<&str>) -> Result<Locale, ApiError> {
    Locale::parse(raw.unwrap_or("en"))
        .map_err(|e| ApiError::invalid("fallbackLocale", e.to_string()))
}

/// The subscription `raw` names in the caller's tenant; 404 for ids of other tenants too.
pub async fn find(state: &AppState, caller: &Caller, raw: &str) -> Result<Subscription, ApiError> {
    let tenant = caller.tenant()?;
    let key = SubscriptionKey::parse(raw).map_err(|_| ApiError::not_found("subscription"))?;
    subscriptions::by_key(&state.pool, tenant.id, key.as_str())
        .await
        .map_err(not_found_as("subscription"))
}

/// Admins change subscriptions; system ones only the global admin.
pub fn may_change(caller: &Caller, subscription: &Subscription) -> Result<(), ApiError> {
    caller.require_admin()?;
    if subscription.system && !caller.is_global_admin() {
        return Err(ApiError::forbidden(
            "only the global admin changes system subscriptions",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions", params(super::Paging), responses((status = 200, body = Page<SubscriptionView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<SubscriptionView>>, ApiError> {
    let tenant = caller.tenant()?;
    let page = subscriptions::list(&state.pool, tenant.id, paging.request()?).await?;
    Ok(Json(page.map(Into::into)))
}

#[utoipa::path(post, path = "/subscriptions", tag = "subscriptions", request_body = NewSubscriptionRequest, responses((status = 201, body = SubscriptionView), (status = 409, description = "The id is taken")))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewSubscriptionRequest>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    if body.system && !caller.is_global_admin() {
        return Err(ApiError::forbidden(
            "only the global admin creates system subscriptions",
        ));
    }
    let key = parse_key(&body.subscription_id)?;
    check_text("label", &body.label, 200)?;
    let locale = parse_locale(body.fallback_locale.as_deref())?;
    let created = subscriptions::create(
        &state.pool,
        tenant.id,
        NewSubscription {
            key: key.as_str(),
            label: body.label.trim(),
            description: &body.description,
            system: body.system,
            enabled: body.enabled,
            fallback_locale: locale.as_str(),
            actor: &caller.actor,
        },
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict(_) => ApiError {
            field: Some("subscriptionId".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("subscription {key} exists already"),
            )
        },
        other => other.into(),
    })?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

#[utoipa::path(get, path = "/subscriptions/{subscription_id}", tag = "subscriptions", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)")), responses((status = 200, body = SubscriptionView)))]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(find(&state, &caller, &id).await?.into()))
}

#[utoipa::path(put, path = "/subscriptions/{subscription_id}", tag = "subscriptions", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)")), request_body = SubscriptionChange, responses((status = 200, body = SubscriptionView)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SubscriptionChange>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let subscription = find(&state, &caller, &id).await?;
    may_change(&caller, &subscription)?;
    check_text("label", &body.label, 200)?;
    let locale = match body.fallback_locale.as_deref() {
        Some(raw) => parse_locale(Some(raw))?,
        None => parse_locale(Some(&subscription.fallback_locale))?,
    };
    let updated = subscriptions::update(
        &state.pool,
        subscription.tenant_id,
        subscription.id,
        SubscriptionUpdate {
            label: body.label.trim(),
            description: body
                .description
                .as_deref()
                .unwrap_or(&subscription.description),
            enabled: body.enabled.unwrap_or(subscription.enabled),
            fallback_locale: locale.as_str(),
            actor: &caller.actor,
        },
    )
    .await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(delete, path = "/subscriptions/{subscription_id}", tag = "subscriptions", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)")), responses((status = 204, description = "Deleted with its registrations, templates and schedules")))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let subscription = find(&state, &caller, &id).await?;
    may_change(&caller, &subscription)?;
    subscriptions::delete(&state.pool, subscription.tenant_id, subscription.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Admins see every registration of the subscription; a user sees only their own.
#[utoipa::path(get, path = "/subscriptions/{subscription_id}/registrations", tag = "subscriptions", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)"), super::Paging), responses((status = 200, body = Page<RegistrationView>)))]
async fn list_registrations(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<RegistrationView>>, ApiError> {
    let subscription = find(&state, &caller, &id).await?;
    let mut filter = Filter {
        subscription_id: Some(subscription.id),
        user_id: None,
    };
    // Admins see every registration of the subscription; a user only their own.
    match Audience::of(&state, &caller, subscription.tenant_id, None).await? {
        Audience::Everyone => {}
        Audience::Person(id) => filter.user_id = Some(id),
        Audience::Nobody => return Ok(Json(Page::empty())),
    }
    let page = registrations::list(
        &state.pool,
        subscription.tenant_id,
        filter,
        paging.request()?,
    )
    .await?;
    Ok(Json(page.map(Into::into)))
}

/// Its schema is [`crate::schema::SubscribeBody`]: the address pattern per channel.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscribeRequest {
    pub channel: String,
    pub address: String,
    /// Whose registration: required for admins, the caller's own for users.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// R12: a subscription without templates can be subscribed to; subscribing again with the
/// same address returns the registration (200) instead of creating another (201).
#[utoipa::path(post, path = "/subscriptions/{subscription_id}/subscribe", tag = "subscriptions", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)")), request_body = crate::schema::SubscribeBody, responses((status = 201, description = "Subscribed", body = RegistrationView), (status = 200, description = "Subscribed already", body = RegistrationView)))]
async fn subscribe(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SubscribeRequest>,
) -> Result<(StatusCode, Json<RegistrationView>), ApiError> {
    let subscription = find(&state, &caller, &id).await?;
    let person = subscriber(&caller, body.user_id.as_deref())?;
    let (channel, address) = super::registrations::parse_address(&body.channel, &body.address)?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let user = users::ensure(&mut *tx, subscription.tenant_id, person.as_str()).await?;
    // Issue #17: a registration names one of the person's own proven addresses, so that
    // subscribing cannot point Herald at somebody else's mailbox or number.
    match addresses::by_value(&mut *tx, user.id, channel, &address).await? {
        Some(a) if a.verified => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "address",
                "this address is not proven yet: confirm the code Herald sent to it (POST /users/{userId}/addresses/{addressId}/verify), then subscribe",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "address",
                "not one of this person's addresses: add it (POST /users/{userId}/addresses) and confirm the code Herald sends to it, or link the chat, then subscribe",
            ));
        }
    }
    let cap = state.verifier.registrations_per_user;
    if registrations::count_for_user(&mut *tx, user.id).await? >= cap
        && registrations::find(&mut *tx, subscription.id, user.id, channel, &address)
            .await?
            .is_none()
    {
        return Err(ApiError::invalid(
            "subscriptionId",
            format!("this person has {cap} registrations, the most one may have; remove one first"),
        ));
    }
    let (registration, created) = registrations::subscribe(
        &mut tx,
        subscription.tenant_id,
        subscription.id,
        user.id,
        channel,
        &address,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(registration.into())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UnsubscribeQuery {
    /// Whose registrations: required for admins; a user may leave it out (their own).
    #[serde(default)]
    #[param(value_type = crate::schema::UserIdText, required = true)]
    pub user_id: Option<String>,
    /// Only this channel's registrations (with `address`: only that one).
    #[serde(default)]
    #[param(value_type = Option<crate::schema::ChannelName>)]
    pub channel: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[utoipa::path(delete, path = "/subscriptions/{subscription_id}/unsubscribe", tag = "subscriptions", params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id (letters and `_`)"), UnsubscribeQuery), responses((status = 204, description = "Unsubscribed")))]
async fn unsubscribe(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<UnsubscribeQuery>,
) -> Result<StatusCode, ApiError> {
    let subscription = find(&state, &caller, &id).await?;
    let person = subscriber(&caller, query.user_id.as_deref())?;
    let (channel, address) = match (&query.channel, &query.address) {
        (Some(channel), Some(address)) => {
            let (channel, address) = super::registrations::parse_address(channel, address)?;
            (Some(channel), Some(address))
        }
        (Some(channel), None) => (Some(super::registrations::parse_channel(channel)?), None),
        (None, Some(_)) => {
            return Err(ApiError::invalid("channel", "an address needs its channel"));
        }
        (None, None) => (None, None),
    };
    let user =
        match users::by_external_id(&state.pool, subscription.tenant_id, person.as_str()).await {
            Ok(user) => user,
            Err(StoreError::NotFound) => return Err(ApiError::not_found("registration")),
            Err(other) => return Err(other.into()),
        };
    let removed = registrations::unsubscribe(
        &state.pool,
        subscription.tenant_id,
        subscription.id,
        user.id,
        channel,
        address.as_deref(),
    )
    .await?;
    if removed == 0 {
        return Err(ApiError::not_found("registration"));
    }
    Ok(StatusCode::NO_CONTENT)
}
