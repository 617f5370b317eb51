//! Extractors whose rejections are problem documents naming what is wrong: JSON bodies,
//! query strings and path parameters.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

/// The deepest nesting of arrays and objects a body may have (issue #17): template data is
/// free-form, and every level costs the parser and, later, the template engine a frame.
/// serde_json's own limit (128) is a guard against stack overflow, not a policy.
pub const MAX_DEPTH: usize = 32;

/// How deeply a JSON text nests arrays and objects, read without parsing it (brackets inside
/// strings do not count). Malformed text gets a number too; the parser says what is wrong.
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `application/json` or a `+json` type, as axum's `Json` takes them.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(e.status(), "Body too large or unreadable", e.body_text())
        })?;
        // serde reads a struct from a JSON array too (`[null, null]` as its fields in order);
        // every body here is an object with named fields, so an array is refused as one.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid body",
                "the body must be a JSON object",
            ));
        }
        if nesting(&bytes) > MAX_DEPTH {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid body",
                format!("the body nests arrays and objects deeper than {MAX_DEPTH} levels"),
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid body",
                    e.body_text(),
                ),
                JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Unsupported media type",
                    "send the body as application/json",
                ),
                JsonRejection::BytesRejection(e) => {
                    ApiError::new(e.status(), "Body too large or unreadable", e.body_text())
                }
                other => ApiError::bad_request(other.body_text()),
            }),
        }
    }
}

/// Query parameters; a bad one is a 400 problem naming it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "Invalid query", e.body_text()))
    }
}

/// Path parameters; one that cannot be an id of ours names nothing that exists: 404.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "Not found", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_outside_strings() {
        assert_eq!(nesting(b"{}"), 1);
        assert_eq!(nesting(br#"{"a": [1, {"b": [2]}]}"#), 4);
        assert_eq!(nesting(br#"{"a": "[[[{{{", "b": "\"[["}"#), 1);
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(nesting(deep.as_bytes()), 40);
        assert_eq!(nesting(b"not json"), 0);
    }
}
