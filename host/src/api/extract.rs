//! Extractors whose rejections are our error bodies, never axum's text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Code};
use crate::auth::{AuthError, Principal};

/// A JSON body; an empty body or `null` is `T::default()`. Malformed
/// JSON, wrong types and oversized bodies are answered with our error
/// format.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    Code::PayloadTooLarge,
                    "the request body is larger than allowed",
                )
            } else {
                ApiError::invalid_request(format!("cannot read the request body: {rejection}"))
            }
        })?;
        let body = bytes.trim_ascii();
        if body.is_empty() || body == b"null" {
            return Ok(Self(T::default()));
        }
        // Every body of the API is an object (serde would also read a
        // struct from an array).
        if !body.starts_with(b"{") {
            return Err(ApiError::invalid_request("the body must be a JSON object"));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            ApiError::invalid_request(format!("the body is not valid JSON for this request: {e}"))
        })
    }
}

/// The authenticated caller. The `authenticate` middleware verified the
/// token and left the outcome in the request's extensions.
pub struct Authenticated(pub Principal);

/// What `authenticate` found, for extractors and the rate limiter.
#[derive(Clone, Debug)]
pub struct AuthOutcome(pub Result<Principal, AuthError>);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<AuthOutcome>() {
            Some(AuthOutcome(Ok(principal))) => Ok(Self(principal.clone())),
            Some(AuthOutcome(Err(e))) => Err(ApiError::unauthorized(format!(
                "{e}: send `Authorization: Bearer <token>`"
            ))),
            None => Err(ApiError::unauthorized("missing bearer token")),
        }
    }
}
