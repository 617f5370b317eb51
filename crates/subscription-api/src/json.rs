//! A JSON body extractor whose rejections are problem documents naming what is wrong.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
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
