//! The API's one error type: each code of API.md with its status and the
//! JSON body `{"request_id", "error": {"code", "message", "details"}}`.
//!
//! An internal error's cause never reaches the body: it travels in a
//! response extension to the logging middleware, which logs it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::functions::FunctionError;
use crate::runtime;
use crate::sessions::{ExecuteError, StartError};
use crate::store::StoreError;
use crate::toolchain::BuildError;

/// The error codes of API.md, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    PayloadTooLarge,
    /// A method the route does not serve: 405, with `Allow`.
    MethodNotAllowed,
    InvalidParams,
    Unauthorized,
    Forbidden,
    NotFound,
    CompileError,
    RateLimited,
    Overloaded,
    RuntimeError,
    Internal,
    Timeout,
}

/// The `error.code` of a body: what clients match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidParams,
    Unauthorized,
    Forbidden,
    NotFound,
    CompileError,
    RateLimited,
    Overloaded,
    RuntimeError,
    InternalError,
    Timeout,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The session the request was about, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    pub code: ErrorCode,
    pub message: String,
    /// Depends on the code: a guest error's `message`, `stack_trace`,
    /// `line` and `column`; a compile error's `diagnostics`; a limit's
    /// `reason` and `limit`.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl Code {
    /// Every code, for the contract's tests.
    pub const ALL: [Code; 13] = [
        Code::InvalidRequest,
        Code::PayloadTooLarge,
        Code::MethodNotAllowed,
        Code::InvalidParams,
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotFound,
        Code::CompileError,
        Code::RateLimited,
        Code::Overloaded,
        Code::RuntimeError,
        Code::Internal,
        Code::Timeout,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest | Code::InvalidParams => StatusCode::BAD_REQUEST,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::CompileError => StatusCode::UNPROCESSABLE_ENTITY,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Code::RuntimeError | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn name(self) -> ErrorCode {
        match self {
            // A body over the limit, or a method the route does not serve,
            // is an invalid request, answered with 413 or 405.
            Code::InvalidRequest | Code::PayloadTooLarge | Code::MethodNotAllowed => {
                ErrorCode::InvalidRequest
            }
            Code::InvalidParams => ErrorCode::InvalidParams,
            Code::Unauthorized => ErrorCode::Unauthorized,
            Code::Forbidden => ErrorCode::Forbidden,
            Code::NotFound => ErrorCode::NotFound,
            Code::CompileError => ErrorCode::CompileError,
            Code::RateLimited => ErrorCode::RateLimited,
            Code::Overloaded => ErrorCode::Overloaded,
            Code::RuntimeError => ErrorCode::RuntimeError,
            Code::Internal => ErrorCode::InternalError,
            Code::Timeout => ErrorCode::Timeout,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self.name() {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::CompileError => "COMPILE_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::RuntimeError => "RUNTIME_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::Timeout => "TIMEOUT",
        }
    }
}

/// An error answered to a client. Boxed: errors are rare and `Result`s
/// of a small `Err` keep the success path lean.
#[derive(Debug)]
pub struct ApiError(Box<Detail>);

#[derive(Debug)]
pub struct Detail {
    pub code: Code,
    pub message: String,
    pub details: Value,
    pub request_id: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after_secs: Option<u64>,
    /// The cause of an internal error: logged, never sent.
    cause: Option<String>,
}

/// What the logging middleware learns of an error response.
#[derive(Clone, Debug)]
pub struct ErrorRecord {
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// The internal cause, for the host's log only.
    pub cause: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self(Box::new(Detail {
            code,
            message: message.into(),
            details: json!({}),
            request_id: None,
            retry_after_secs: None,
            cause: None,
        }))
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidParams, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut error = Self::new(Code::RateLimited, "too many requests; retry later");
        error.0.retry_after_secs = Some(retry_after_secs);
        error
    }

    /// A failure of the host: the body says only that.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut error = Self::new(Code::Internal, "internal error");
        error.0.cause = Some(format!("{cause:#}"));
        error
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after_secs = Some(secs);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.0.details = details;
        self
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.0.request_id.get_or_insert(request_id.into());
        self
    }

    /// The body a client is answered with (the CLI prints errors in the
    /// same shape).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            request_id: self.0.request_id.clone(),
            error: ErrorObject {
                code: self.0.code.name(),
                message: self.0.message.clone(),
                details: self.0.details.clone(),
            },
        }
    }

    /// What went wrong inside the host, which the body does not say: for
    /// the host's log, and for the operator at the command line.
    pub fn cause(&self) -> Option<&str> {
        self.0.cause.as_deref()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let error = *self.0;
        let mut response = (error.code.status(), axum::Json(body)).into_response();
        if let Some(secs) = error.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(request_id) = error.request_id {
            response
                .extensions_mut()
                .insert(super::RequestId(request_id));
        }
        response.extensions_mut().insert(ErrorRecord {
            code: error.code.as_str(),
            message: error.message,
            details: error.details,
            cause: error.cause,
        });
        response
    }
}

impl From<runtime::Error> for ApiError {
    fn from(error: runtime::Error) -> Self {
        use runtime::Error as E;
        match error {
            E::Timeout(_) => ApiError::new(Code::Timeout, error.to_string()),
            // Slots free up as executions end: a second is a fair guess.
            E::Overloaded { .. } => {
                ApiError::new(Code::Overloaded, error.to_string()).retry_after(1)
            }
            E::CallerAtShare { share } => ApiError::new(Code::RateLimited, error.to_string())
                .with_details(json!({ "reason": "concurrent_executions", "limit": share }))
                .retry_after(1),
            E::OutOfMemory { limit_bytes } => ApiError::new(Code::RuntimeError, error.to_string())
                .with_details(json!({ "reason": "out_of_memory", "limit_bytes": limit_bytes })),
            E::Guest(guest) => {
                let details = json!(guest);
                ApiError::new(Code::RuntimeError, guest.message).with_details(details)
            }
            E::Trap { .. } | E::InvalidResult(_) => {
                let message = error.to_string();
                ApiError::new(Code::RuntimeError, message.clone())
                    .with_details(json!({ "message": message }))
            }
            // `/fn/...` of a JSON function: there is no HTTP function by
            // that name.
            E::WrongWorld(why) => ApiError::not_found(why),
            E::InvalidComponent(_) | E::Internal(_) => ApiError::internal(error),
        }
    }
}

impl From<BuildError> for ApiError {
    fn from(error: BuildError) -> Self {
        match error {
            BuildError::Compile(e) => ApiError::new(Code::CompileError, e.message)
                .with_details(json!({ "diagnostics": e.diagnostics })),
            BuildError::Unavailable { language, .. } => ApiError::invalid_request(format!(
                "the {language} toolchain is not available on this host"
            )),
            BuildError::LimitExceeded { limit, .. } => {
                ApiError::new(Code::CompileError, error.to_string())
                    .with_details(json!({ "reason": "build_limit", "limit": limit }))
            }
            BuildError::Internal(e) => ApiError::internal(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::internal(error)
    }
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Forbidden(_) => ApiError::forbidden(error.to_string()),
            StartError::InvalidContext(_) | StartError::NulInSource => {
                ApiError::invalid_request(error.to_string())
            }
            StartError::ContextTooLarge { limit, .. } => {
                ApiError::new(Code::PayloadTooLarge, error.to_string())
                    .with_details(json!({ "limit_bytes": limit }))
            }
            StartError::TooManyBuilds { retry_after_secs } => {
                ApiError::rate_limited(retry_after_secs).with_details(json!({ "reason": "builds" }))
            }
            StartError::NoSuchFunction(_) => ApiError::not_found(error.to_string()),
            StartError::OverQuota {
                used_bytes,
                quota_bytes,
            } => ApiError::new(Code::RateLimited, error.to_string())
                .with_details(json!({
                    "reason": "session_quota",
                    "used_bytes": used_bytes,
                    "quota_bytes": quota_bytes,
                }))
                .retry_after(60),
            StartError::Function(e) => e.into(),
            StartError::Store(e) => e.into(),
        }
    }
}

impl From<ExecuteError> for ApiError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::NotFound => ApiError::not_found(error.to_string()),
            ExecuteError::Forbidden(_) => ApiError::forbidden(error.to_string()),
            ExecuteError::InvalidParams(message) => ApiError::invalid_params(message),
            ExecuteError::Function(e) => e.into(),
            ExecuteError::Store(e) => e.into(),
        }
    }
}

impl From<FunctionError> for ApiError {
    fn from(error: FunctionError) -> Self {
        match error {
            FunctionError::Forbidden(message) => ApiError::forbidden(message),
            FunctionError::Build(e) => e.into(),
            FunctionError::Runtime(e) => e.into(),
            FunctionError::Store(e) => e.into(),
            FunctionError::MissingArtifact(_) => ApiError::internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_as_its_name() {
        for code in Code::ALL {
            assert_eq!(json!(code.name()), json!(code.as_str()));
        }
    }

    #[test]
    fn every_code_maps_to_the_status_of_api_md() {
        let expected = [
            (Code::InvalidRequest, 400, "INVALID_REQUEST"),
            (Code::PayloadTooLarge, 413, "INVALID_REQUEST"),
            (Code::MethodNotAllowed, 405, "INVALID_REQUEST"),
            (Code::InvalidParams, 400, "INVALID_PARAMS"),
            (Code::Unauthorized, 401, "UNAUTHORIZED"),
            (Code::Forbidden, 403, "FORBIDDEN"),
            (Code::NotFound, 404, "NOT_FOUND"),
            (Code::CompileError, 422, "COMPILE_ERROR"),
            (Code::RateLimited, 429, "RATE_LIMITED"),
            (Code::Overloaded, 503, "OVERLOADED"),
            (Code::RuntimeError, 500, "RUNTIME_ERROR"),
            (Code::Internal, 500, "INTERNAL_ERROR"),
            (Code::Timeout, 504, "TIMEOUT"),
        ];
        for (code, status, name) in expected {
            assert_eq!((code.status().as_u16(), code.as_str()), (status, name));
        }
    }

    #[test]
    fn an_internal_error_keeps_its_cause_out_of_the_body() {
        let response = ApiError::internal("password=hunter2 at db:5432").into_response();
        let record = response.extensions().get::<ErrorRecord>().unwrap();
        assert_eq!(record.message, "internal error");
        assert!(record.cause.as_deref().unwrap().contains("hunter2"));
    }
}
