//! `/event-bindings` (R14): an event type (such as `audit.login`, published to the ingress
//! exchange by another system) fires every subscription bound to it in the tenant.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::StoreError;
use herald_storage::event_bindings::{self, EventBinding};
use herald_storage::page::Page;
use messaging_core::ingress::EventType;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Paging;
use super::subscriptions::{find, may_change};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, remove))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventBindingView {
    pub binding_id: Uuid,
    #[schema(example = "audit.login")]
    pub event_type: String,
    pub subscription_id: String,
    pub created_at: DateTime<Utc>,
}

impl From<EventBinding> for EventBindingView {
    fn from(b: EventBinding) -> Self {
        EventBindingView {
            binding_id: b.id,
            event_type: b.event_type,
            subscription_id: b.subscription_key,
            created_at: b.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewBindingRequest {
    /// Dot-separated lower-case words, as producers publish it.
    #[schema(value_type = crate::schema::EventTypeText, example = "audit.login")]
    pub event_type: String,
    #[schema(value_type = crate::schema::SubscriptionIdText)]
    pub subscription_id: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only bindings of this event type.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::EventTypeText>)]
    pub event_type: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::CursorText>)]
    pub cursor: Option<String>,
}

fn parse_event_type(raw: &str) -> Result<EventType, ApiError> {
    EventType::parse(raw).map_err(|e| ApiError::invalid("eventType", e.to_string()))
}

#[utoipa::path(
    get,
    path = "/event-bindings",
    tag = "triggers",
    params(ListQuery),
    responses((status = 200, body = Page<EventBindingView>)),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<EventBindingView>>, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    let event_type = query
        .event_type
        .as_deref()
        .map(parse_event_type)
        .transpose()?;
    let paging = Paging {
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = event_bindings::list(
        &state.pool,
        tenant.id,
        event_type.as_ref().map(|t| t.as_str()),
        paging.request()?,
    )
    .await?;
    Ok(Json(page.map(Into::into)))
}

#[utoipa::path(
    post,
    path = "/event-bindings",
    tag = "triggers",
    request_body = NewBindingRequest,
    responses((status = 201, body = EventBindingView), (status = 409, description = "Bound already")),
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewBindingRequest>,
) -> Result<(StatusCode, Json<EventBindingView>), ApiError> {
    caller.require_admin()?;
    let event_type = parse_event_type(&body.event_type)?;
    let subscription = find(&state, &caller, &body.subscription_id).await?;
    // An event firing a system subscription is a trigger of it: global admin only (R16).
    may_change(&caller, &subscription)?;
    let created = event_bindings::create(
        &state.pool,
        subscription.tenant_id,
        event_type.as_str(),
        subscription.id,
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict(_) => ApiError {
            field: Some("subscriptionId".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "{} is bound to {} already",
                    subscription.key,
                    event_type.as_str()
                ),
            )
        },
        other => other.into(),
    })?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

async fn owned(state: &AppState, caller: &Caller, id: Uuid) -> Result<EventBinding, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    event_bindings::by_id(&state.pool, tenant.id, id)
        .await
        .map_err(not_found_as("event binding"))
}

#[utoipa::path(
    get,
    path = "/event-bindings/{binding_id}",
    tag = "triggers",
    params(("binding_id" = Uuid, Path)),
    responses((status = 200, body = EventBindingView)),
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EventBindingView>, ApiError> {
    Ok(Json(owned(&state, &caller, id).await?.into()))
}

#[utoipa::path(
    delete,
    path = "/event-bindings/{binding_id}",
    tag = "triggers",
    params(("binding_id" = Uuid, Path)),
    responses((status = 204, description = "Deleted")),
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let binding = owned(&state, &caller, id).await?;
    let subscription = find(&state, &caller, &binding.subscription_key).await?;
    may_change(&caller, &subscription)?;
    event_bindings::delete(&state.pool, binding.tenant_id, binding.id)
        .await
        .map_err(not_found_as("event binding"))?;
    Ok(StatusCode::NO_CONTENT)
}
