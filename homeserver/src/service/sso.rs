//! Browser sign-in and sign-up state: short-lived single-use login tokens
//! for `m.login.token`, sign-ins waiting for their second factor, and
//! sign-ups waiting for their e-mail code. All of it lives in memory: it
//! expires within minutes, and a restart simply asks the user to start
//! again.

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use crate::util::Expiring;

/// How long a login token can be exchanged.
const TOKEN_LIFETIME: Duration = Duration::from_secs(120);
/// How long a sign-in waits for its code.
const PENDING_LIFETIME: Duration = Duration::from_secs(300);
/// How long a sign-up waits for its e-mail code.
const SIGNUP_LIFETIME: Duration = Duration::from_secs(3600);

/// A sign-in whose password was right and whose code is awaited.
#[derive(Debug, Clone)]
pub struct Pending {
    pub user_id: OwnedUserId,
    /// Where the browser goes afterwards: a client's redirect URL, or the
    /// account page when empty.
    pub redirect_url: String,
}

/// A sign-up from the registration page waiting for its e-mail code. It
/// holds the password in memory only (it is hashed when the account is
/// made), so it has no `Debug`.
#[derive(Clone)]
pub struct PendingSignup {
    pub user_id: OwnedUserId,
    pub password: String,
    pub displayname: Option<String>,
    pub email: String,
    pub sid: String,
    pub client_secret: String,
    pub redirect_url: String,
}

pub struct Service {
    tokens: Expiring<OwnedUserId>,
    pending: Expiring<Pending>,
    pub signups: Expiring<PendingSignup>,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            tokens: Expiring::new(TOKEN_LIFETIME),
            pending: Expiring::new(PENDING_LIFETIME),
            signups: Expiring::new(SIGNUP_LIFETIME),
        }
    }
}

impl Service {
    /// A new login token for the user.
    pub fn issue_token(&self, user_id: &UserId) -> String {
        self.tokens.insert(user_id.to_owned())
    }

    /// Exchanges a login token, once.
    pub fn take_token(&self, token: &str) -> Option<OwnedUserId> {
        self.tokens.take(token)
    }

    /// Records a sign-in waiting for its code; returns its ID.
    pub fn start_pending(&self, user_id: &UserId, redirect_url: &str) -> String {
        self.pending.insert(Pending { user_id: user_id.to_owned(), redirect_url: redirect_url.to_owned() })
    }

    /// The waiting sign-in with this ID, if it has not expired.
    pub fn pending(&self, id: &str) -> Option<Pending> {
        self.pending.get(id)
    }

    /// Ends a waiting sign-in (its code was accepted).
    pub fn finish_pending(&self, id: &str) {
        self.pending.take(id);
    }
}
