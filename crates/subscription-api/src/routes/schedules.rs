//! `/schedules` (R14): cron-like triggers of a subscription, stored in the database and fired
//! by the router once per due time, whatever the number of router replicas.
//!
//! The API computes the first run when a schedule is written, with the same code the router
//! uses for the following ones, and shows it with a plain-English reading of the expression.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::page::Page;
use herald_storage::schedules::{self, Schedule, ScheduleFields};
use messaging_core::schedule::CronSchedule;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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
        .routes(routes!(read, update, remove))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    pub schedule_id: Uuid,
    pub subscription_id: String,
    /// Five fields (minute hour day-of-month month day-of-week) or `@daily`-style.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub time_zone: String,
    /// The expression in words, to check it means what you meant.
    pub description: String,
    pub event_parameters: Map<String, Value>,
    pub enabled: bool,
    pub next_run_at: DateTime<Utc>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

impl From<Schedule> for ScheduleView {
    fn from(s: Schedule) -> Self {
        let description = CronSchedule::parse(&s.cron, &s.time_zone)
            .map(|c| c.describe())
            .unwrap_or_default();
        ScheduleView {
            schedule_id: s.id,
            subscription_id: s.subscription_key,
            cron: s.cron,
            time_zone: s.time_zone,
            description,
            event_parameters: match s.event_parameters {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            enabled: s.enabled,
            next_run_at: s.next_run_at,
            last_run_at: s.last_run_at,
            created_at: s.created_at,
            modified_at: s.updated_at,
        }
    }
}

fn utc() -> String {
    "UTC".to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewScheduleRequest {
    #[schema(value_type = crate::schema::SubscriptionIdText)]
    pub subscription_id: String,
    /// Five fields (minute hour day-of-month month day-of-week) or `@hourly`, `@daily`, ...
    #[schema(example = "0 9 * * MON-FRI")]
    pub cron: String,
    /// IANA name; default `UTC`.
    #[serde(default = "utc")]
    #[schema(example = "Europe/Berlin")]
    pub time_zone: String,
    /// The data the subscription's templates are rendered with, as on the trigger route.
    #[serde(default)]
    pub event_parameters: Map<String, Value>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// Omitted fields keep their value. A changed expression or zone, or re-enabling, computes
/// the next run afresh from now.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleChange {
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub event_parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this subscription's schedules.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    #[param(value_type = Option<crate::schema::CursorText>)]
    pub cursor: Option<String>,
}

fn first_run(cron: &str, time_zone: &str) -> Result<DateTime<Utc>, ApiError> {
    CronSchedule::parse(cron, time_zone)
        .and_then(|s| s.next_after(Utc::now()))
        .map_err(|e| ApiError::invalid(e.field(), e.to_string()))
}

/// The schedule with this id in the caller's tenant, for admins.
async fn owned(state: &AppState, caller: &Caller, id: Uuid) -> Result<Schedule, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    schedules::by_id(&state.pool, tenant.id, id)
        .await
        .map_err(not_found_as("schedule"))
}

#[utoipa::path(
    get,
    path = "/schedules",
    tag = "triggers",
    params(ListQuery),
    responses((status = 200, body = Page<ScheduleView>)),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<ScheduleView>>, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    let paging = Paging {
        limit: query.limit,
        cursor: query.cursor,
    };
    let subscription = match &query.subscription_id {
        Some(raw) => match find(&state, &caller, raw).await {
            Ok(s) => Some(s.id),
            // Filtering on a subscription that does not exist lists nothing.
            Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(Json(Page::empty())),
            Err(e) => return Err(e),
        },
        None => None,
    };
    let page = schedules::list(&state.pool, tenant.id, subscription, paging.request()?).await?;
    Ok(Json(page.map(Into::into)))
}

#[utoipa::path(
    post,
    path = "/schedules",
    tag = "triggers",
    request_body = NewScheduleRequest,
    responses((status = 201, body = ScheduleView)),
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewScheduleRequest>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    caller.require_admin()?;
    let subscription = find(&state, &caller, &body.subscription_id).await?;
    // Scheduling a trigger is triggering: the same rule as the trigger route (R16).
    may_change(&caller, &subscription)?;
    let next_run_at = first_run(&body.cron, &body.time_zone)?;
    let parameters = Value::Object(body.event_parameters);
    let created = schedules::create(
        &state.pool,
        subscription.tenant_id,
        subscription.id,
        ScheduleFields {
            cron: body.cron.trim(),
            time_zone: &body.time_zone,
            event_parameters: &parameters,
            enabled: body.enabled,
            next_run_at,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

#[utoipa::path(
    get,
    path = "/schedules/{schedule_id}",
    tag = "triggers",
    params(("schedule_id" = Uuid, Path)),
    responses((status = 200, body = ScheduleView)),
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(owned(&state, &caller, id).await?.into()))
}

#[utoipa::path(
    put,
    path = "/schedules/{schedule_id}",
    tag = "triggers",
    params(("schedule_id" = Uuid, Path)),
    request_body = ScheduleChange,
    responses((status = 200, body = ScheduleView)),
)]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ScheduleChange>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule = owned(&state, &caller, id).await?;
    let subscription = find(&state, &caller, &schedule.subscription_key).await?;
    may_change(&caller, &subscription)?;
    let cron = body.cron.as_deref().unwrap_or(&schedule.cron).trim();
    let time_zone = body.time_zone.as_deref().unwrap_or(&schedule.time_zone);
    let enabled = body.enabled.unwrap_or(schedule.enabled);
    let retimed =
        cron != schedule.cron || time_zone != schedule.time_zone || (enabled && !schedule.enabled);
    let next_run_at = if retimed {
        first_run(cron, time_zone)?
    } else {
        schedule.next_run_at
    };
    let parameters = match body.event_parameters {
        Some(map) => Value::Object(map),
        None => schedule.event_parameters.clone(),
    };
    let updated = schedules::update(
        &state.pool,
        schedule.tenant_id,
        schedule.id,
        ScheduleFields {
            cron,
            time_zone,
            event_parameters: &parameters,
            enabled,
            next_run_at,
        },
    )
    .await
    .map_err(not_found_as("schedule"))?;
    Ok(Json(updated.into()))
}

#[utoipa::path(
    delete,
    path = "/schedules/{schedule_id}",
    tag = "triggers",
    params(("schedule_id" = Uuid, Path)),
    responses((status = 204, description = "Deleted")),
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let schedule = owned(&state, &caller, id).await?;
    let subscription = find(&state, &caller, &schedule.subscription_key).await?;
    may_change(&caller, &subscription)?;
    schedules::delete(&state.pool, schedule.tenant_id, schedule.id)
        .await
        .map_err(not_found_as("schedule"))?;
    Ok(StatusCode::NO_CONTENT)
}
