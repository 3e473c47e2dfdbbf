//! The errors of the client.

use serde_json::Value;

use crate::crypto::CryptoError;
use crate::store::StoreError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was configured wrongly (homeserver URL, TLS trust, …).
    #[error("{0}")]
    Config(String),
    /// The homeserver could not be reached at all.
    #[error("cannot reach the homeserver at {url}: {reason}")]
    Unreachable {
        /// The homeserver's base URL.
        url: String,
        /// What went wrong (connection refused, TLS failure, timeout, …).
        reason: String,
    },
    /// The homeserver answered with a Matrix error.
    #[error("{message} ({errcode}, HTTP {status})")]
    Matrix {
        /// The HTTP status.
        status: u16,
        /// The Matrix `errcode`, such as `M_FORBIDDEN`.
        errcode: String,
        /// The server's `error` message.
        message: String,
        /// `retry_after_ms` of a rate-limited request.
        retry_after_ms: Option<u64>,
    },
    /// The server asks for a user-interactive authentication stage this
    /// client cannot complete.
    #[error("the server asks for authentication this client cannot do: {0}")]
    UnsupportedAuth(String),
    /// The server's answer could not be understood.
    #[error("unexpected answer from the homeserver: {0}")]
    Response(String),
    /// The operation needs a logged-in session.
    #[error("not logged in")]
    NotLoggedIn,
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// End-to-end encryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl ClientError {
    /// The Matrix `errcode`, if the server answered with one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Matrix { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the server could not be
    /// reached, was overloaded or rate-limited the request.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Matrix { status, errcode, .. } => *status == 429 || *status >= 500 || errcode == "M_LIMIT_EXCEEDED",
            _ => false,
        }
    }

    /// Builds the error from a non-success HTTP answer.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Self {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        Self::Matrix {
            status,
            errcode: text("errcode").unwrap_or_else(|| "M_UNKNOWN".to_owned()),
            message: text("error").unwrap_or_else(|| format!("HTTP {status}")),
            retry_after_ms: json.get("retry_after_ms").and_then(Value::as_u64),
        }
    }
}
