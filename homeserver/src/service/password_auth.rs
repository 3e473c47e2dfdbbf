//! Password checks shared by `/login` and the `m.login.password` UIA stage:
//! per-account rate limit, lockout, deactivation, argon2 verification, audit.

use ruma::UserId;

use super::{Services, audit::AuditKind, mfa::Verdict, ratelimit::Action};
use crate::{
    err,
    error::{Error, ErrorKind, Result},
};

const BAD_CREDENTIALS: &str = "Invalid username or password";

/// Verifies `password` for `user_id`, or fails with the Matrix error to send.
/// `kind` is the audit event written for a wrong password.
pub async fn verify(s: &Services, user_id: &UserId, password: String, remote: &str, kind: AuditKind) -> Result<()> {
    s.ratelimit.check(Action::Login, user_id.as_str())?;
    if let Some(ms) = s.lockout.locked_for(user_id)? {
        s.audit.record(kind, Some(user_id.as_str()), remote, "account locked");
        return Err(Error::new(
            ErrorKind::LimitExceeded { retry_after_ms: ms },
            "Too many failed login attempts; the account is temporarily locked",
        ));
    }
    let Some(account) = s.users.account(user_id)? else {
        // Spend the same time as a real check, so timing does not reveal which accounts exist.
        s.users.check_password_timing_only(password).await?;
        s.audit.record(kind, Some(user_id.as_str()), remote, "unknown user");
        return Err(err!(Forbidden, "{BAD_CREDENTIALS}"));
    };
    if account.deactivated {
        s.users.check_password_timing_only(password).await?;
        s.audit.record(kind, Some(user_id.as_str()), remote, "deactivated account");
        return Err(err!(UserDeactivated, "This account has been deactivated"));
    }
    if s.users.check_password(&account, password).await? {
        // With a second factor, only a correct code clears the failure count,
        // so a known password cannot be used to keep guessing codes.
        if !s.mfa.is_enabled(user_id)? {
            s.lockout.record_success(user_id).await?;
        }
        return Ok(());
    }
    s.audit.record(kind, Some(user_id.as_str()), remote, "wrong password");
    if s.lockout.record_failure(user_id).await? {
        s.audit.record(AuditKind::AccountLocked, Some(user_id.as_str()), remote, "too many failed logins");
        tracing::warn!(user = %user_id, "account locked after repeated failed logins");
    }
    Err(err!(Forbidden, "{BAD_CREDENTIALS}"))
}

/// Checks a second-factor code (TOTP or recovery code) of a user whose
/// password was just verified. Failures count towards the same lockout as
/// wrong passwords and are audited; `kind` names the audit event.
pub async fn verify_code(s: &Services, user_id: &UserId, code: &str, remote: &str, kind: AuditKind) -> Result<()> {
    if let Some(ms) = s.lockout.locked_for(user_id)? {
        s.audit.record(kind, Some(user_id.as_str()), remote, "account locked");
        return Err(Error::new(
            ErrorKind::LimitExceeded { retry_after_ms: ms },
            "Too many failed login attempts; the account is temporarily locked",
        ));
    }
    let reason = match s.mfa.verify(user_id, code).await? {
        Verdict::Accepted => None,
        Verdict::RecoveryCodeUsed => {
            s.audit.record(AuditKind::RecoveryCodeUsed, Some(user_id.as_str()), remote, "recovery code used");
            None
        }
        Verdict::Replayed => Some("code already used"),
        Verdict::Wrong => Some("wrong code"),
    };
    let Some(reason) = reason else {
        s.lockout.record_success(user_id).await?;
        return Ok(());
    };
    s.audit.record(kind, Some(user_id.as_str()), remote, reason);
    if s.lockout.record_failure(user_id).await? {
        s.audit.record(AuditKind::AccountLocked, Some(user_id.as_str()), remote, "too many failed second factors");
        tracing::warn!(user = %user_id, "account locked after repeated failed second factors");
    }
    Err(match reason {
        "code already used" => err!(Forbidden, "This code was already used; wait for the next one"),
        _ => err!(Forbidden, "Invalid code"),
    })
}
