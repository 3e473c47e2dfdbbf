//! User-interactive authentication: sessions, flows and stages.
//!
//! A request that needs UIA calls [`Service::authenticate`] with the flows it
//! accepts. Without a completed flow the caller gets a 401 whose body lists
//! the flows, the completed stages and the session ID.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedUserId, api::client::uiaa::AuthData};
use serde_json::{Value, json};

use crate::{error::Error, util::random_string};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
/// Hearth's second-factor stage: `{"type", "code", "session"}` with a TOTP or recovery code.
pub const TOTP: &str = "org.hearth.login.totp";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
pub const EMAIL_IDENTITY: &str = "m.login.email.identity";

const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

struct Session {
    completed: Vec<String>,
    /// The flows offered, so that a stage completed out of band (on the
    /// fallback page) can be checked against them.
    flows: Vec<Vec<String>>,
    /// The user a session was started for, when the request is authenticated.
    user: Option<OwnedUserId>,
    created: Instant,
}

/// The result of checking one stage.
pub enum StageResult {
    Done,
    Failed(Error),
}

pub struct Service {
    sessions: Mutex<HashMap<String, Session>>,
}

impl Default for Service {
    fn default() -> Self {
        Self::new()
    }
}

impl Service {
    pub fn new() -> Self {
        Self { sessions: Mutex::new(HashMap::new()) }
    }

    fn body(flows: &[&[&str]], session: &str, completed: &[String], error: Option<&Error>) -> Value {
        let mut body = json!({
            "flows": flows.iter().map(|f| json!({ "stages": f })).collect::<Vec<_>>(),
            "params": {},
            "session": session,
            "completed": completed,
        });
        if let Some(e) = error {
            let (_, e) = e.to_status_and_body();
            body["errcode"] = e["errcode"].clone();
            body["error"] = e["error"].clone();
        }
        body
    }

    /// Drives UIA for one request.
    ///
    /// `check_stage` validates the auth data of the stage the client submitted;
    /// it is only called for stages that appear in `flows`. Returns `Ok(())`
    /// once every stage of some flow is complete (and forgets the session).
    /// The user of a live session, if `stage` is the next stage of one of
    /// its flows (for the fallback page).
    pub fn pending_stage_user(&self, session_id: &str, stage: &str) -> Option<OwnedUserId> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let s = sessions.get(session_id).filter(|s| s.created.elapsed() < SESSION_LIFETIME)?;
        let next = s.flows.iter().any(|f| {
            f.len() > s.completed.len() && f[..s.completed.len()] == s.completed[..] && f[s.completed.len()] == stage
        });
        if next { s.user.clone() } else { None }
    }

    /// Records `stage` as completed out of band (on the fallback page).
    pub fn complete_out_of_band(&self, session_id: &str, stage: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get_mut(session_id) {
            s.completed.push(stage.to_owned());
        }
    }

    pub async fn authenticate<F, Fut>(
        &self,
        flows: &[&[&str]],
        auth: Option<&AuthData>,
        user: Option<&OwnedUserId>,
        check_stage: F,
    ) -> Result<(), Error>
    where
        F: FnOnce(&AuthData) -> Fut,
        Fut: std::future::Future<Output = Result<StageResult, Error>>,
    {
        let now = Instant::now();
        let session_id = auth.and_then(|a| a.session()).map(str::to_owned);
        // Find or start the session.
        let (session_id, completed) = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|_, s| now.duration_since(s.created) < SESSION_LIFETIME);
            match session_id.as_ref().and_then(|id| sessions.get(id).map(|s| (id, s))) {
                Some((id, s)) => {
                    if s.user.as_ref() != user {
                        return Err(crate::err!(Forbidden, "This authentication session belongs to another user"));
                    }
                    (id.clone(), s.completed.clone())
                }
                None => {
                    // Unknown or missing: always a fresh, server-chosen ID.
                    let id = random_string(24);
                    let flows = flows.iter().map(|f| f.iter().map(|s| (*s).to_owned()).collect()).collect();
                    sessions
                        .insert(id.clone(), Session { completed: vec![], flows, user: user.cloned(), created: now });
                    (id, vec![])
                }
            }
        };
        let Some(auth) = auth else {
            return Err(Error::Uiaa(Box::new(Self::body(flows, &session_id, &completed, None))));
        };
        let Some(stage) = auth.auth_type().map(|t| t.to_string()) else {
            // `{session}` alone: the client says a stage was completed on the
            // fallback page. Done if the completed stages make up a flow.
            if flows.iter().any(|f| f.len() == completed.len() && f[..] == completed[..]) {
                self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&session_id);
                return Ok(());
            }
            return Err(Error::Uiaa(Box::new(Self::body(flows, &session_id, &completed, None))));
        };
        let allowed = flows.iter().any(|f| {
            // The stage must be the next one of a flow that matches what is done so far.
            f.len() > completed.len() && f[..completed.len()] == completed[..] && f[completed.len()] == stage
        });
        if !allowed {
            let e = crate::err!(Unrecognized, "Authentication stage {stage:?} is not expected here");
            return Err(Error::Uiaa(Box::new(Self::body(flows, &session_id, &completed, Some(&e)))));
        }
        match check_stage(auth).await? {
            StageResult::Failed(e) => Err(Error::Uiaa(Box::new(Self::body(flows, &session_id, &completed, Some(&e))))),
            StageResult::Done => {
                let mut completed = completed;
                completed.push(stage);
                let finished = flows.iter().any(|f| f.len() == completed.len() && f[..] == completed[..]);
                let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                if finished {
                    sessions.remove(&session_id);
                    Ok(())
                } else {
                    if let Some(s) = sessions.get_mut(&session_id) {
                        s.completed = completed.clone();
                    }
                    Err(Error::Uiaa(Box::new(Self::body(flows, &session_id, &completed, None))))
                }
            }
        }
    }
}
