//! `/subscriptions/{subscriptionId}/templates` (R13): subject and body per channel and locale.
//!
//! A template is addressed by its channel (or `default`, used by channels without their own)
//! and locale, so `PUT` creates or replaces it and is safe to repeat. Bodies are checked when
//! they are written: a syntax error is a 422 here, not a failed delivery later.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::subscriptions::Subscription;
use herald_storage::templates::{self, Template, TemplateKey, TemplateText};
use messaging_core::Channel;
use messaging_core::values::Locale;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::registrations::parse_channel;
use super::subscriptions::{find, may_change};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath};
use crate::schema::MAX_TEMPLATE_CHARS;
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read, put, remove))
}

/// The channel segment that means "every channel without a template of its own".
const DEFAULT_CHANNEL: &str = "default";

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    /// A channel, or `default` for channels without a template of their own.
    pub channel: String,
    pub locale: String,
    pub subject: Option<String>,
    pub body: String,
    pub html: Option<String>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        TemplateView {
            channel: t
                .channel
                .map_or(DEFAULT_CHANNEL, Channel::as_str)
                .to_owned(),
            locale: t.locale,
            subject: t.subject,
            body: t.body,
            html: t.html,
            created_at: t.created_at,
            modified_at: t.updated_at,
        }
    }
}

/// Template text: [MiniJinja](https://docs.rs/minijinja) (Jinja2 syntax) rendered with the
/// trigger's `eventParameters`. A parameter a template uses but a trigger lacks fails that
/// delivery as `template_error`; mark optional ones with `default` or `is defined`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateRequest {
    /// Email subject; chat channels show it in bold above the body.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::TemplateText>)]
    pub subject: Option<String>,
    #[schema(value_type = crate::schema::TemplateBody)]
    pub body: String,
    /// HTML alternative for email.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::TemplateText>)]
    pub html: Option<String>,
}

#[derive(Deserialize)]
pub struct TemplatePath {
    subscription_id: String,
    channel: String,
    locale: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; `TemplatePath` reads it
struct TemplatePathDoc {
    /// The subscription's id (letters and `_`).
    #[param(value_type = crate::schema::SubscriptionIdText)]
    subscription_id: String,
    /// `telegram`, `discord`, `xmpp`, `email`, `sms`, or `default`.
    #[param(value_type = crate::schema::TemplateChannel)]
    channel: String,
    /// A BCP 47 language tag such as `en` or `de-CH`.
    #[param(value_type = crate::schema::LocaleText)]
    locale: String,
}

/// The subscription, for admins only: templates are how a tenant speaks, people do not need
/// to read them.
async fn subscription(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<Subscription, ApiError> {
    caller.require_admin()?;
    find(state, caller, raw).await
}

fn parse_key_parts(path: &TemplatePath) -> Result<(Option<Channel>, Locale), ApiError> {
    let channel = if path.channel == DEFAULT_CHANNEL {
        None
    } else {
        Some(parse_channel(&path.channel)?)
    };
    let locale =
        Locale::parse(&path.locale).map_err(|e| ApiError::invalid("locale", e.to_string()))?;
    Ok((channel, locale))
}

/// Parses a template text the way the router will, so errors surface at write time.
fn check_template(field: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().count() > MAX_TEMPLATE_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_TEMPLATE_CHARS} characters"),
        ));
    }
    let env = minijinja::Environment::new();
    env.template_from_str(text)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(field, format!("template syntax: {e}")))
}

#[utoipa::path(
    get,
    path = "/subscriptions/{subscription_id}/templates",
    tag = "templates",
    params(("subscription_id" = crate::schema::SubscriptionIdText, Path, description = "The subscription's id")),
    responses((status = 200, description = "Every template of the subscription", body = Vec<TemplateView>)),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<TemplateView>>, ApiError> {
    let subscription = subscription(&state, &caller, &id).await?;
    let all =
        templates::for_subscription(&state.pool, subscription.tenant_id, subscription.id).await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    get,
    path = "/subscriptions/{subscription_id}/templates/{channel}/{locale}",
    tag = "templates",
    params(TemplatePathDoc),
    responses((status = 200, body = TemplateView)),
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<TemplatePath>,
) -> Result<Json<TemplateView>, ApiError> {
    let subscription = subscription(&state, &caller, &path.subscription_id).await?;
    let (channel, locale) = parse_key_parts(&path)?;
    let template = templates::get(
        &state.pool,
        TemplateKey {
            tenant_id: subscription.tenant_id,
            subscription_id: subscription.id,
            channel,
            locale: locale.as_str(),
        },
    )
    .await
    .map_err(not_found_as("template"))?;
    Ok(Json(template.into()))
}

#[utoipa::path(
    put,
    path = "/subscriptions/{subscription_id}/templates/{channel}/{locale}",
    tag = "templates",
    params(TemplatePathDoc),
    request_body = TemplateRequest,
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 200, description = "Replaced", body = TemplateView),
    ),
)]
async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<TemplatePath>,
    ApiJson(body): ApiJson<TemplateRequest>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let subscription = subscription(&state, &caller, &path.subscription_id).await?;
    may_change(&caller, &subscription)?;
    let (channel, locale) = parse_key_parts(&path)?;
    if body.body.trim().is_empty() {
        return Err(ApiError::invalid("body", "must not be empty"));
    }
    check_template("body", &body.body)?;
    if let Some(subject) = &body.subject {
        check_template("subject", subject)?;
    }
    if let Some(html) = &body.html {
        check_template("html", html)?;
    }
    let (template, created) = templates::put(
        &state.pool,
        TemplateKey {
            tenant_id: subscription.tenant_id,
            subscription_id: subscription.id,
            channel,
            locale: locale.as_str(),
        },
        TemplateText {
            subject: body.subject.as_deref(),
            body: &body.body,
            html: body.html.as_deref(),
        },
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(template.into())))
}

#[utoipa::path(
    delete,
    path = "/subscriptions/{subscription_id}/templates/{channel}/{locale}",
    tag = "templates",
    params(TemplatePathDoc),
    responses((status = 204, description = "Deleted")),
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(path): ApiPath<TemplatePath>,
) -> Result<StatusCode, ApiError> {
    let subscription = subscription(&state, &caller, &path.subscription_id).await?;
    may_change(&caller, &subscription)?;
    let (channel, locale) = parse_key_parts(&path)?;
    templates::delete(
        &state.pool,
        TemplateKey {
            tenant_id: subscription.tenant_id,
            subscription_id: subscription.id,
            channel,
            locale: locale.as_str(),
        },
    )
    .await
    .map_err(not_found_as("template"))?;
    Ok(StatusCode::NO_CONTENT)
}
