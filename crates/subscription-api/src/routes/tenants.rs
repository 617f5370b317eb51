//! `/tenants`: global admins only (R10, R16), except reading a tenant's SMS country codes,
//! which its own admins may do.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::page::Page;
use herald_storage::{StoreError, tenants};
use messaging_core::values::TenantKey;
use serde::{Deserialize, Serialize};

use super::check_text;
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_sms_country_codes, set_sms_country_codes))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub tenant: String,
    pub name: String,
    /// Country calling codes SMS may go to in this tenant; absent: the operator's default
    /// list (`api.sms_country_codes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_country_codes: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
}

impl From<tenants::Tenant> for TenantView {
    fn from(t: tenants::Tenant) -> Self {
        TenantView {
            tenant: t.key,
            name: t.name,
            sms_country_codes: t.sms_country_codes,
            created_at: t.created_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTenant {
    #[schema(value_type = crate::schema::TenantKeyText)]
    pub tenant: String,
    #[schema(value_type = crate::schema::LabelText)]
    pub name: String,
    /// Country calling codes SMS may go to (`["41", "49"]`); absent: the default list.
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::schema::CountryCodeText>>, max_items = 300)]
    pub sms_country_codes: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/tenants", tag = "admin", request_body = NewTenant, responses((status = 201, body = TenantView)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    caller.require_global_admin()?;
    let key =
        TenantKey::parse(&body.tenant).map_err(|e| ApiError::invalid("tenant", e.to_string()))?;
    check_text("name", &body.name, 200)?;
    let codes = country_codes(body.sms_country_codes.as_deref())?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let mut tenant = tenants::create(&mut *tx, key.as_str(), body.name.trim()).await?;
    if codes.is_some() {
        tenant = tenants::set_sms_country_codes(&mut *tx, tenant.id, codes.as_deref()).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

fn country_codes(raw: Option<&[String]>) -> Result<Option<Vec<String>>, ApiError> {
    raw.map(|codes| {
        if codes.len() > 300 {
            return Err(ApiError::invalid("smsCountryCodes", "at most 300 codes"));
        }
        crate::verification::country_codes(codes)
    })
    .transpose()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmsCountryCodes {
    /// `null`: back to the operator's default list.
    #[schema(value_type = Option<Vec<crate::schema::CountryCodeText>>, max_items = 300)]
    pub sms_country_codes: Option<Vec<String>>,
}

/// The country calling codes SMS may go to in a tenant, and where the list comes from.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmsCountryCodesView {
    pub tenant: String,
    /// Empty: no SMS address can be added in the tenant.
    pub sms_country_codes: Vec<String>,
    /// `tenant`: the tenant's own list; `default`: the operator's (`api.sms_country_codes`).
    #[schema(pattern = "^(tenant|default)$")]
    pub source: String,
}

/// Where SMS may go in a tenant (issue #17): its admins see the list that refuses their
/// people's numbers; only a global admin changes it.
#[utoipa::path(get, path = "/tenants/{tenant}/sms-country-codes", tag = "admin", params(("tenant" = crate::schema::TenantKeyText, Path)), responses((status = 200, body = SmsCountryCodesView)))]
async fn get_sms_country_codes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<SmsCountryCodesView>, ApiError> {
    caller.require_admin()?;
    // Another tenant's admin learns nothing, not even that the tenant exists.
    if !caller.is_global_admin() && caller.tenant()?.key != key {
        return Err(ApiError::not_found("tenant"));
    }
    let tenant = tenants::by_key(&state.pool, &key)
        .await
        .map_err(not_found_as("tenant"))?;
    Ok(Json(SmsCountryCodesView {
        sms_country_codes: state.verifier.sms_country_codes(&tenant).to_vec(),
        source: if tenant.sms_country_codes.is_some() {
            "tenant"
        } else {
            "default"
        }
        .to_owned(),
        tenant: tenant.key,
    }))
}

/// Which countries SMS may go to in a tenant: toll fraud pumps messages to expensive ranges.
#[utoipa::path(put, path = "/tenants/{tenant}/sms-country-codes", tag = "admin", params(("tenant" = crate::schema::TenantKeyText, Path)), request_body = SmsCountryCodes, responses((status = 200, body = TenantView)))]
async fn set_sms_country_codes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<SmsCountryCodes>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require_global_admin()?;
    let codes = country_codes(body.sms_country_codes.as_deref())?;
    let tenant = tenants::by_key(&state.pool, &key)
        .await
        .map_err(not_found_as("tenant"))?;
    let tenant = tenants::set_sms_country_codes(&state.pool, tenant.id, codes.as_deref()).await?;
    tracing::info!(tenant = %tenant.key, actor = %caller.actor, "SMS country codes set");
    Ok(Json(tenant.into()))
}

#[utoipa::path(get, path = "/tenants", tag = "admin", params(super::Paging), responses((status = 200, body = Page<TenantView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<super::Paging>,
) -> Result<Json<Page<TenantView>>, ApiError> {
    caller.require_global_admin()?;
    Ok(Json(
        tenants::list(&state.pool, paging.request()?)
            .await?
            .map(Into::into),
    ))
}
