//! Security audit events: failed logins, unknown or expired tokens, lockouts.
//!
//! Each event is written as one JSON line to the audit file, emitted on the
//! `audit` tracing target, and counted.

use std::{collections::BTreeMap, io::Write, path::Path, sync::Mutex};

use serde::Serialize;

use crate::util::now_ms;

/// The kinds of audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    LoginFailed,
    UnknownToken,
    ExpiredToken,
    AccountLocked,
    UiaPasswordFailed,
    MfaFailed,
    RecoveryCodeUsed,
    PasswordReset,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginFailed => "login_failed",
            Self::UnknownToken => "unknown_token",
            Self::ExpiredToken => "expired_token",
            Self::AccountLocked => "account_locked",
            Self::UiaPasswordFailed => "uia_password_failed",
            Self::MfaFailed => "mfa_failed",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::PasswordReset => "password_reset",
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: u64,
    event: &'static str,
    user: Option<&'a str>,
    remote: &'a str,
    reason: &'a str,
}

pub struct Service {
    file: Mutex<std::fs::File>,
    counters: Mutex<BTreeMap<AuditKind, u64>>,
}

impl Service {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        Ok(Self { file: Mutex::new(file), counters: Mutex::new(BTreeMap::new()) })
    }

    /// Records one event. `user` is whoever the request concerned, if known.
    pub fn record(&self, kind: AuditKind, user: Option<&str>, remote: &str, reason: &str) {
        let line = Line { ts: now_ms(), event: kind.as_str(), user, remote, reason };
        tracing::warn!(target: "audit", event = kind.as_str(), user, remote, reason, "audit");
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(text.as_bytes()) {
                tracing::error!(error = %e, "writing the audit log failed");
            }
        }
        *self.counters.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
    }

    /// Counts per event kind since start.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_as_json_lines_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Service::open(&path).unwrap();
        audit.record(AuditKind::LoginFailed, Some("@a:hs"), "127.0.0.1", "wrong password");
        audit.record(AuditKind::LoginFailed, None, "127.0.0.1", "unknown user");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "login_failed");
        assert_eq!(lines[0]["user"], "@a:hs");
        assert_eq!(lines[1]["user"], serde_json::Value::Null);
        assert_eq!(audit.counters()["login_failed"], 2);
    }
}
