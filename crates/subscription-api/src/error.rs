//! Errors as RFC 9457 problem documents (`application/problem+json`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_storage::StoreError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The problem's `type`: `about:blank`, or a URI of its own where a client must tell
    /// this problem from others with the same status (see [`ApiError::with_type`]).
    pub kind: &'static str,
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
    /// The request field at fault, for validation errors.
    pub field: Option<String>,
    /// Seconds for the `Retry-After` header (a 429, an empty room pool's 503).
    pub retry_after: Option<u64>,
}

/// An RFC 9457 problem document: every error this API answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `about:blank` (the status and title say what happened), or a URI naming a problem a
    /// client acts on: `tag:herald,2026:no-free-room` (503) and
    /// `tag:herald,2026:no-staff-available` (409) of the help-desk rooms.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            kind: "about:blank",
            status,
            title,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// A problem type of its own, for a problem a client tells apart by more than its status
    /// (an empty room pool from a database outage, both 503).
    pub fn with_type(mut self, uri: &'static str) -> Self {
        self.kind = uri;
        self
    }

    /// With `Retry-After` (whole seconds).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// A field's value breaks a rule (422), naming the field.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.to_owned()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid field", detail)
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    /// Also what another tenant's ids get: their existence is not revealed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no such {what}"),
        )
    }
}

/// For `map_err`: a storage error, with "not found" answered as "no such `what`".
pub fn not_found_as(what: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

/// `Retry-After` of a 503 for a database that cannot be reached.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "Not found", "no such resource")
            }
            StoreError::Conflict(constraint) => ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("it exists already ({constraint})"),
            ),
            StoreError::Invalid(constraint) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("the request breaks a rule of the data model ({constraint})"),
            ),
            StoreError::Unavailable(reason) => {
                tracing::error!(%reason, "database unavailable");
                ApiError {
                    // A restart or a failover takes seconds: a client that waits this long
                    // and tries again usually gets through (issue #18).
                    retry_after: Some(DATABASE_RETRY_AFTER_SECS),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Database unavailable",
                        "the database cannot be reached; nothing was changed, try again later",
                    )
                }
            }
            StoreError::Other(error) => {
                tracing::error!(%error, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "an unexpected database error happened",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: self.kind,
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let response = (
            self.status,
            [("content-type", "application/problem+json")],
            body,
        )
            .into_response();
        match self.retry_after {
            Some(seconds) => crate::limits::with_retry_after(response, seconds),
            None => response,
        }
    }
}
