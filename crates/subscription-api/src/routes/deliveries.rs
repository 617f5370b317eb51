//! `/deliveries` (R15, R16, R17): delivery records with filters and pagination. Admins read
//! the tenant's; a user reads only their own.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use herald_storage::deliveries::{self, Filter};
use herald_storage::page::Page;
use herald_storage::{StoreError, subscriptions};
use messaging_core::DeliveryStatus;
use serde::Deserialize;
use uuid::Uuid;

use super::Paging;
use super::messages::{DeliveryView, explain_pending};
use super::registrations::{Audience, parse_channel};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only this subscription's deliveries; an unknown one lists nothing.
    #[serde(default)]
    pub subscription_id: Option<String>,
    #[serde(default)]
    #[param(value_type = Option<crate::schema::UserIdText>)]
    pub user_id: Option<String>,
    #[serde(default)]
    #[param(value_type = Option<crate::schema::ChannelName>)]
    pub channel: Option<String>,
    #[serde(default)]
    #[param(value_type = Option<crate::schema::DeliveryStatusName>)]
    pub status: Option<String>,
    /// Created at or after this time.
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    /// Created before this time.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Items per page, 1 to 200 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::CursorText>)]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/deliveries", tag = "deliveries", params(DeliveryQuery), responses((status = 200, body = Page<DeliveryView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let tenant = caller.tenant()?;
    let page = Paging {
        limit: query.limit,
        cursor: query.cursor,
    }
    .request()?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            s.parse::<DeliveryStatus>()
                .map_err(|_| ApiError::invalid("status", "must be pending, sent or failed"))
        })
        .transpose()?;
    let mut filter = Filter {
        channel: query.channel.as_deref().map(parse_channel).transpose()?,
        status,
        from: query.from,
        until: query.until,
        ..Filter::default()
    };
    match Audience::of(&state, &caller, tenant.id, query.user_id.as_deref()).await? {
        Audience::Everyone => {}
        Audience::Person(id) => filter.user_id = Some(id),
        Audience::Nobody => return Ok(Json(Page::empty())),
    }
    if let Some(key) = &query.subscription_id {
        match subscriptions::by_key(&state.pool, tenant.id, key).await {
            Ok(subscription) => filter.subscription_id = Some(subscription.id),
            Err(StoreError::NotFound) => return Ok(Json(Page::empty())),
            Err(other) => return Err(other.into()),
        }
    }
    let mut page: Page<DeliveryView> = deliveries::list(&state.pool, tenant.id, &filter, page)
        .await?
        .map(Into::into);
    explain_pending(&state.pool, &mut page.items).await;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/deliveries/{delivery_id}", tag = "deliveries", params(("delivery_id" = Uuid, Path)), responses((status = 200, body = DeliveryView)))]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<DeliveryView>, ApiError> {
    let tenant = caller.tenant()?;
    let delivery = deliveries::by_id(&state.pool, tenant.id, id)
        .await
        .map_err(not_found_as("delivery"))?;
    if !caller.is_admin() && caller.user_id.as_deref() != delivery.user_external_id.as_deref() {
        return Err(ApiError::not_found("delivery"));
    }
    let mut view: DeliveryView = delivery.into();
    explain_pending(&state.pool, std::slice::from_mut(&mut view)).await;
    Ok(Json(view))
}
