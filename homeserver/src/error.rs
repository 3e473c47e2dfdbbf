//! The homeserver's one error type, and its one conversion to a Matrix error
//! response (`errcode`, `error`, HTTP status).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::storage::StorageError;

/// Result alias used throughout the server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Matrix error code with its default HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Forbidden,
    UnknownToken { soft_logout: bool },
    MissingToken,
    BadJson,
    NotJson,
    NotFound,
    LimitExceeded { retry_after_ms: u64 },
    Unrecognized,
    Unknown,
    UserDeactivated,
    UserInUse,
    InvalidUsername,
    Exclusive,
    InvalidParam,
    MissingParam,
    TooLarge,
    WeakPassword,
    Unauthorized,
    UnsupportedRoomVersion,
    RoomInUse,
    WrongRoomKeysVersion,
    InvalidSignature,
    ThreepidInUse,
    ThreepidAuthFailed,
    ThreepidDenied,
    ThreepidNotFound,
}

impl ErrorKind {
    pub fn errcode(self) -> &'static str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::UnknownToken { .. } => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::BadJson => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded { .. } => "M_LIMIT_EXCEEDED",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::Unknown => "M_UNKNOWN",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::Exclusive => "M_EXCLUSIVE",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::TooLarge => "M_TOO_LARGE",
            Self::WeakPassword => "M_WEAK_PASSWORD",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::WrongRoomKeysVersion => "M_WRONG_ROOM_KEYS_VERSION",
            Self::InvalidSignature => "M_INVALID_SIGNATURE",
            Self::ThreepidInUse => "M_THREEPID_IN_USE",
            Self::ThreepidAuthFailed => "M_THREEPID_AUTH_FAILED",
            Self::ThreepidDenied => "M_THREEPID_DENIED",
            Self::ThreepidNotFound => "M_THREEPID_NOT_FOUND",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Forbidden | Self::UserDeactivated | Self::WrongRoomKeysVersion | Self::ThreepidDenied => {
                StatusCode::FORBIDDEN
            }
            Self::UnknownToken { .. } | Self::MissingToken | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::Unrecognized => StatusCode::NOT_FOUND,
            Self::LimitExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Matrix error with a message for the client.
    #[error("{}: {message}", kind.errcode())]
    Request { kind: ErrorKind, message: String, status: Option<StatusCode> },
    /// User-interactive authentication must continue: a 401 with the flows.
    #[error("user-interactive authentication required")]
    Uiaa(Box<Value>),
    /// A key-backup write to a version that is not the current one
    /// (403 `M_WRONG_ROOM_KEYS_VERSION` with `current_version`).
    #[error("M_WRONG_ROOM_KEYS_VERSION")]
    WrongRoomKeysVersion { current_version: Option<String> },
    /// A storage failure: logged, never shown to the client.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Any other internal failure: logged, never shown to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Request { kind, message: message.into(), status: None }
    }

    /// The same error code with a different HTTP status (e.g. 405 M_UNRECOGNIZED).
    pub fn with_status(kind: ErrorKind, status: StatusCode, message: impl Into<String>) -> Self {
        Self::Request { kind, message: message.into(), status: Some(status) }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Request { kind, .. } => *kind,
            Self::Uiaa(_) => ErrorKind::Unauthorized,
            Self::WrongRoomKeysVersion { .. } => ErrorKind::WrongRoomKeysVersion,
            Self::Storage(_) | Self::Internal(_) => ErrorKind::Unknown,
        }
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.to_status_and_body().0
    }

    /// The text a user may see on a page. Internal failures are logged here
    /// and shown as a generic line, as the JSON answer does.
    pub fn message(&self) -> &str {
        match self {
            Self::Request { message, .. } => message,
            Self::Storage(e) => {
                tracing::error!(error = %e, "storage error while serving a page");
                "Something went wrong; try again."
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error while serving a page");
                "Something went wrong; try again."
            }
            Self::Uiaa(_) | Self::WrongRoomKeysVersion { .. } => "Something went wrong; try again.",
        }
    }

    /// The status and JSON body this error is sent as.
    pub fn to_status_and_body(&self) -> (StatusCode, Value) {
        match self {
            Self::Request { kind, message, status } => {
                let mut body = Map::new();
                body.insert("errcode".into(), json!(kind.errcode()));
                body.insert("error".into(), json!(message));
                match kind {
                    ErrorKind::UnknownToken { soft_logout: true } => {
                        body.insert("soft_logout".into(), json!(true));
                    }
                    ErrorKind::LimitExceeded { retry_after_ms } => {
                        body.insert("retry_after_ms".into(), json!(retry_after_ms));
                    }
                    _ => {}
                }
                (status.unwrap_or(kind.status()), Value::Object(body))
            }
            Self::Uiaa(body) => (StatusCode::UNAUTHORIZED, (**body).clone()),
            Self::WrongRoomKeysVersion { current_version } => (
                StatusCode::FORBIDDEN,
                json!({
                    "errcode": "M_WRONG_ROOM_KEYS_VERSION",
                    "error": "This backup version is not the current one",
                    "current_version": current_version,
                }),
            ),
            Self::Storage(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" }))
            }
        }
    }
}

/// `Err(err!(Forbidden, "…"))` in one line.
#[macro_export]
macro_rules! err {
    ($kind:ident, $($fmt:tt)+) => {
        $crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($fmt)+))
    };
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Self::Storage(e) => tracing::error!(error = %e, "storage error while handling a request"),
            Self::Internal(e) => tracing::error!(error = %e, "internal error while handling a request"),
            _ => {}
        }
        let (status, body) = self.to_status_and_body();
        let mut response = (status, axum::Json(body)).into_response();
        if let Self::Request { kind: ErrorKind::LimitExceeded { retry_after_ms }, .. } = &self {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_carry_errcode_status_and_extras() {
        let (status, body) =
            Error::new(ErrorKind::LimitExceeded { retry_after_ms: 1500 }, "slow down").to_status_and_body();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        assert_eq!(body["retry_after_ms"], 1500);

        let (status, body) = Error::new(ErrorKind::UnknownToken { soft_logout: true }, "expired").to_status_and_body();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["soft_logout"], true);

        let (status, body) =
            Error::with_status(ErrorKind::Unrecognized, StatusCode::METHOD_NOT_ALLOWED, "no").to_status_and_body();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    }

    #[test]
    fn internal_errors_are_not_leaked() {
        let (status, body) = Error::Storage(StorageError::Backend("disk path /secret".into())).to_status_and_body();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("secret"));
    }
}
