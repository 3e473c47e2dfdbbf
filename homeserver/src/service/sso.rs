//! Browser sign-in (`m.login.sso`): short-lived single-use login tokens for
//! `m.login.token`, and sign-ins waiting for their second factor. Both live
//! in memory only: they expire within minutes, and a restart simply asks
//! the user to sign in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::{OwnedUserId, UserId};

use crate::util::random_string;

/// How long a login token can be exchanged.
const TOKEN_LIFETIME: Duration = Duration::from_secs(120);
/// How long a sign-in waits for its code.
const PENDING_LIFETIME: Duration = Duration::from_secs(300);

/// A sign-in whose password was right and whose code is awaited.
#[derive(Debug, Clone)]
pub struct Pending {
    pub user_id: OwnedUserId,
    pub redirect_url: String,
    created: Instant,
}

#[derive(Default)]
pub struct Service {
    tokens: Mutex<HashMap<String, (OwnedUserId, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Service {
    /// A new login token for the user.
    pub fn issue_token(&self, user_id: &UserId) -> String {
        let token = random_string(32);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_LIFETIME);
        tokens.insert(token.clone(), (user_id.to_owned(), Instant::now()));
        token
    }

    /// Exchanges a login token, once.
    pub fn take_token(&self, token: &str) -> Option<OwnedUserId> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(token).filter(|(_, at)| at.elapsed() < TOKEN_LIFETIME).map(|(user, _)| user)
    }

    /// Records a sign-in waiting for its code; returns its ID.
    pub fn start_pending(&self, user_id: &UserId, redirect_url: &str) -> String {
        let id = random_string(32);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.created.elapsed() < PENDING_LIFETIME);
        pending.insert(
            id.clone(),
            Pending { user_id: user_id.to_owned(), redirect_url: redirect_url.to_owned(), created: Instant::now() },
        );
        id
    }

    /// The waiting sign-in with this ID, if it has not expired.
    pub fn pending(&self, id: &str) -> Option<Pending> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(id).filter(|p| p.created.elapsed() < PENDING_LIFETIME).cloned()
    }

    /// Ends a waiting sign-in (its code was accepted).
    pub fn finish_pending(&self, id: &str) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}
