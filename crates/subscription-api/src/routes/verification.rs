//! Proving an address (issue #17): the person types back the code Herald sent to it, or
//! opens the link mailed to it; a new code can be asked for within the caps.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use herald_storage::verification::{self, Confirmed, Refused};
use herald_storage::{StoreError, addresses, tenants};
use messaging_core::{AddressState, Channel};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::users::{AddressView, find, person};
use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath};
use crate::startup::AppState;
use crate::verification::CodeSent;

/// The routes a caller authenticates for.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_code))
        .routes(routes!(confirm))
}

/// The mailed link: whoever opens it proves the mailbox, without a login.
pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(link_page, confirm_link))
}

/// Sends a new code to the address (the earlier one stops working), within the caps: a few
/// per address per day, and per tenant per hour.
#[utoipa::path(
    post,
    path = "/users/{user_id}/addresses/{address_id}/verification",
    tag = "users",
    params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person"), ("address_id" = Uuid, Path)),
    responses(
        (status = 202, description = "A code is on its way", body = CodeSent),
        (status = 409, description = "Proven and in service already"),
        (status = 429, description = "Too many verification messages to this address or from this tenant"),
    ),
)]
async fn send_code(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((raw, address_id)): ApiPath<(String, Uuid)>,
) -> Result<(StatusCode, Json<CodeSent>), ApiError> {
    let person = person(&caller, &raw)?;
    let user = find(&state, &caller, &person).await?;
    let tenant = tenants::by_id(&state.pool, user.tenant_id).await?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let address = addresses::by_id(&mut *tx, tenant.id, user.id, address_id)
        .await
        .map_err(not_found_as("address"))?;
    if address.verified && address.state == AddressState::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Proven already",
            "this address is proven and in service; it needs no code",
        ));
    }
    if !matches!(
        address.channel,
        Channel::Email | Channel::Sms | Channel::Xmpp
    ) {
        return Err(ApiError::invalid(
            "addressId",
            format!(
                "{} addresses are proven by linking the chat (a link code), not by a code Herald sends",
                address.channel
            ),
        ));
    }
    if address.channel == Channel::Sms {
        state
            .verifier
            .check_sms_destination(&tenant, &address.value)?;
    }
    let sent = state
        .verifier
        .send(
            &mut tx,
            &state.names,
            &tenant,
            &user,
            &address,
            &caller.actor,
        )
        .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The code from the message (for email, the token at the end of the link).
    #[schema(example = "042917", max_length = 64)]
    pub code: String,
}

/// Confirms the code sent to the address: it is proven, and back in service if it had been
/// found unreachable or removed. A wrong code counts an attempt; after the last one the code
/// is void.
#[utoipa::path(
    post,
    path = "/users/{user_id}/addresses/{address_id}/verify",
    tag = "users",
    params(("user_id" = crate::schema::UserIdText, Path, description = "The tenant's own id for the person"), ("address_id" = Uuid, Path)),
    request_body = ConfirmRequest,
    responses(
        (status = 200, description = "Proven", body = AddressView),
        (status = 422, description = "Wrong, expired, void or no code"),
    ),
)]
async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((raw, address_id)): ApiPath<(String, Uuid)>,
    ApiJson(body): ApiJson<ConfirmRequest>,
) -> Result<Json<AddressView>, ApiError> {
    super::check_text("code", &body.code, 64)?;
    let person = person(&caller, &raw)?;
    let user = find(&state, &caller, &person).await?;
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    // The person's own address, or 404: a code never proves another person's address.
    addresses::by_id(&mut *tx, user.tenant_id, user.id, address_id)
        .await
        .map_err(not_found_as("address"))?;
    let hash = state.verifier.hash(&body.code);
    let confirmed = verification::confirm_code(
        &mut tx,
        user.tenant_id,
        address_id,
        &hash,
        state.verifier.attempts,
    )
    .await?;
    let address = addresses::by_id(&mut *tx, user.tenant_id, user.id, address_id).await?;
    // A wrong attempt must count even though the request fails.
    tx.commit().await.map_err(StoreError::from)?;
    match confirmed {
        Confirmed::Proven { .. } => {
            tracing::info!(%address_id, actor = %caller.actor, "address proven with its code");
            Ok(Json(address.into()))
        }
        Confirmed::Refused(refused) => Err(ApiError::invalid("code", refusal(&refused))),
    }
}

fn refusal(refused: &Refused) -> String {
    match refused {
        Refused::NoCode => "no code to confirm: it was used, replaced by a newer one, void after too many wrong tries, or never sent; ask for a new one (POST .../verification)".into(),
        Refused::Expired => "the code expired; ask for a new one (POST .../verification)".into(),
        Refused::Wrong { attempts_left: 0 } => {
            "wrong code, and that was the last try: the code is void; ask for a new one".into()
        }
        Refused::Wrong { attempts_left } => format!("wrong code; {attempts_left} tries left"),
    }
}

/// The page a mailed link opens: a button that confirms. Opening the link changes nothing,
/// since mail scanners open links on their own; pressing the button does.
#[utoipa::path(
    get,
    path = "/verify/{token}",
    tag = "users",
    // No credential: the token is one.
    security(()),
    params(("token" = String, Path, description = "The token from the mailed link")),
    responses((status = 200, description = "A page with a button that confirms", content_type = "text/html", body = String)),
)]
async fn link_page(ApiPath(_token): ApiPath<String>) -> Response {
    page(
        StatusCode::OK,
        "Confirm your address",
        "<p>Press the button to confirm that this email address is yours and may receive notifications.</p>\
         <form method=\"post\"><button type=\"submit\">Confirm</button></form>",
    )
}

/// Confirms the mailed link's token: the mailbox is proven.
#[utoipa::path(
    post,
    path = "/verify/{token}",
    tag = "users",
    security(()),
    params(("token" = String, Path, description = "The token from the mailed link")),
    responses(
        (status = 200, description = "Proven", content_type = "text/html", body = String),
        (status = 404, description = "Unknown, used or replaced", content_type = "text/html", body = String),
        (status = 410, description = "Expired", content_type = "text/html", body = String),
    ),
)]
async fn confirm_link(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    if token.len() > 64 {
        return Ok(not_valid());
    }
    let mut tx = state.pool.begin().await.map_err(StoreError::from)?;
    let confirmed = verification::confirm_link(&mut tx, &state.verifier.hash(&token)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(match confirmed {
        Confirmed::Proven { address_id, .. } => {
            tracing::info!(%address_id, "address proven with its mailed link");
            page(
                StatusCode::OK,
                "Address confirmed",
                "<p>Thank you: this address is confirmed and will receive notifications.</p>",
            )
        }
        Confirmed::Refused(Refused::Expired) => page(
            StatusCode::GONE,
            "Link expired",
            "<p>This link has expired. Ask for a new one where you added the address.</p>",
        ),
        Confirmed::Refused(_) => not_valid(),
    })
}

fn not_valid() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This link is not valid: it was used already, or a newer one was sent.</p>",
    )
}

/// A small page of fixed text (nothing from the request is echoed). The token is in the
/// URL: no referrer leaves it elsewhere, no cache keeps it, no other site frames the button.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}
