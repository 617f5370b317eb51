//! `POST /user-imports` (issue #17): up to [`MAX_PEOPLE`] people with their settings and
//! addresses in one request, for an admin's import. Each person is checked and written on
//! their own (a savepoint each, one commit for all), so one bad entry is reported with its
//! index and does not stop the others; the request counts once against the caller's limit.
//! Not `/users/bulk`: that would hide a person whose id is `bulk`.

use axum::Json;
use axum::extract::State;
use herald_storage::StoreError;
use herald_storage::tenants;
use herald_storage::users;
use messaging_core::values::UserId;
use serde::{Deserialize, Serialize};
use sqlx::Acquire;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::users::{AddressView, NewAddressRequest, UserSettings, UserView};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::json::ApiJson;
use crate::startup::AppState;

/// People one request may name.
pub const MAX_PEOPLE: usize = 1_000;
/// Addresses one person may bring in one request.
pub const MAX_ADDRESSES: usize = 20;
/// The body a full import needs: 1,000 people with a few addresses each are about 300 KB,
/// more than the API's default limit for other routes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkRequest {
    /// 1 to 1,000 people.
    #[schema(min_items = 1, max_items = 1000)]
    pub users: Vec<BulkPerson>,
}

/// One person. The fields are described loosely on purpose: each entry is checked on its
/// own, as the single routes check it, and a bad entry is reported in the results (`200`)
/// rather than refusing the whole import.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkPerson {
    /// The tenant's own id for the person (1 to 255 bytes, no control characters).
    pub user_id: String,
    /// Given any of `locale`, `preferredChannel`, `deliveryMode`: the person's settings are
    /// replaced, as `PUT /users/{userId}` does. None: a known person's settings stay.
    /// A locale (`de`, `de-CH`).
    #[serde(default)]
    pub locale: Option<String>,
    /// A channel name; needed with `deliveryMode: preferred`.
    #[serde(default)]
    pub preferred_channel: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::DeliveryModeName>)]
    pub delivery_mode: Option<messaging_core::ingress::DeliveryMode>,
    /// Added as `POST /users/{userId}/addresses` adds them (`verified: true` imports one
    /// as proven; otherwise a code goes to it). Up to 20; more fail the entry.
    #[serde(default)]
    #[schema(value_type = Vec<BulkAddress>)]
    pub addresses: Vec<NewAddressRequest>,
}

/// An address of an imported person, as `POST /users/{userId}/addresses` takes it
/// (`NewAddressRequest`); checked per entry.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // Only its schema is used: the body is read as a `NewAddressRequest`.
pub struct BulkAddress {
    /// A channel name (`email`, `sms`, `xmpp`, `telegram`, ...).
    channel: String,
    address: String,
    #[serde(default)]
    display_name: Option<String>,
    /// For `xmpp`: a multi-user-chat room.
    #[serde(default)]
    room: bool,
    /// An admin vouches that the address is the person's.
    #[serde(default)]
    verified: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkResponse {
    pub created: usize,
    pub updated: usize,
    pub failed: usize,
    /// One per person, in the order of the request.
    pub results: Vec<BulkResult>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkResult {
    /// The person's position in `users`, from 0.
    pub index: usize,
    pub user_id: String,
    /// `created`, `updated` or `failed` (nothing of this person was written).
    #[schema(example = "created")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserView>,
    /// The problem, its `field` naming the place in the request (`users[3].addresses[0].address`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// Creates or updates up to 1,000 people with their addresses. `200` with a result per
/// person, also when some failed; a database outage fails the whole request (`503`, nothing
/// written).
#[utoipa::path(post, path = "/user-imports", tag = "users", request_body = BulkRequest, responses((status = 200, description = "A result per person: created, updated or failed with its problem", body = BulkResponse)))]
async fn import(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    caller.require_admin()?;
    if body.users.is_empty() || body.users.len() > MAX_PEOPLE {
        return Err(ApiError::invalid(
            "users",
            format!("name 1 to {MAX_PEOPLE} people"),
        ));
    }
    let tenant = tenants::by_id(&state.pool, caller.tenant()?.id).await?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let mut results = Vec::with_capacity(body.users.len());
    for (index, person) in body.users.iter().enumerate() {
        let mut savepoint = tx.begin().await.map_err(StoreError::from)?;
        match write_person(&state, &caller, &mut savepoint, &tenant, person).await {
            Ok((user, created)) => {
                savepoint.commit().await.map_err(StoreError::from)?;
                results.push(BulkResult {
                    index,
                    user_id: person.user_id.clone(),
                    status: if created { "created" } else { "updated" },
                    user: Some(user),
                    error: None,
                });
            }
            // The database is gone or broke: no entry can be written, so none is.
            Err(error) if error.status.is_server_error() => return Err(error),
            Err(error) => {
                savepoint.rollback().await.map_err(StoreError::from)?;
                let field = match &error.field {
                    Some(field) => format!("users[{index}].{field}"),
                    None => format!("users[{index}]"),
                };
                results.push(BulkResult {
                    index,
                    user_id: person.user_id.clone(),
                    status: "failed",
                    user: None,
                    error: Some(Problem {
                        kind: error.kind,
                        title: error.title.to_owned(),
                        status: error.status.as_u16(),
                        detail: error.detail,
                        field: Some(field),
                    }),
                });
            }
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    let (created, updated, failed) = (count("created"), count("updated"), count("failed"));
    tracing::info!(tenant = %tenant.key, actor = %caller.actor, created, updated, failed, "people imported");
    Ok(Json(BulkResponse {
        created,
        updated,
        failed,
        results,
    }))
}

/// One person with their addresses, all or nothing. Whether the person is new.
async fn write_person(
    state: &AppState,
    caller: &Caller,
    tx: &mut sqlx::PgConnection,
    tenant: &tenants::Tenant,
    person: &BulkPerson,
) -> Result<(UserView, bool), ApiError> {
    let id =
        UserId::parse(&person.user_id).map_err(|e| ApiError::invalid("userId", e.to_string()))?;
    if person.addresses.len() > MAX_ADDRESSES {
        return Err(ApiError::invalid(
            "addresses",
            format!("at most {MAX_ADDRESSES} addresses per person in one request"),
        ));
    }
    let checked = person
        .addresses
        .iter()
        .enumerate()
        .map(|(i, address)| address.check(caller).map_err(|e| at_address(e, i)))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = UserSettings {
        locale: person.locale.clone(),
        preferred_channel: person.preferred_channel.clone(),
        delivery_mode: person.delivery_mode,
    };
    let settings = if settings.is_empty() {
        None
    } else {
        Some(settings.parse()?)
    };
    let created = match users::by_external_id(&mut *tx, tenant.id, id.as_str()).await {
        Ok(_) => false,
        Err(StoreError::NotFound) => true,
        Err(other) => return Err(other.into()),
    };
    let user = match &settings {
        Some(settings) => {
            users::put(&mut *tx, tenant.id, id.as_str(), settings.as_settings()).await?
        }
        None => users::ensure(&mut *tx, tenant.id, id.as_str()).await?,
    };
    let mut addresses: Vec<AddressView> = Vec::with_capacity(checked.len());
    for (i, address) in checked.iter().enumerate() {
        let (view, _) = super::users::add_checked(state, caller, tx, tenant, &user, address)
            .await
            .map_err(|e| at_address(e, i))?;
        addresses.push(view);
    }
    let mut view = UserView::from(user);
    view.addresses = Some(addresses);
    Ok((view, created))
}

fn at_address(mut error: ApiError, index: usize) -> ApiError {
    error.field = Some(match error.field.take() {
        Some(field) => format!("addresses[{index}].{field}"),
        None => format!("addresses[{index}]"),
    });
    error
}
