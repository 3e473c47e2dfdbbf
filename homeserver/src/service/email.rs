//! E-mail verification: codes sent over SMTP (lettre), sessions the client
//! names by `sid` and proves with its `client_secret`, as the spec's
//! `/requestToken` endpoints and the `m.login.email.identity` stage use them.
//!
//! A session is stored (so a restart between the e-mail and the click loses
//! nothing) with SHA-256 hashes of its client secret and of the codes sent.
//! (An 8-digit code's hash can be reversed by trying every code, so for a
//! reader of the database the protection is the session's short life.) A code is 8 digits; a session takes at most
//! [`MAX_FAILURES`] wrong codes. Codes and verified sessions last
//! `smtp.token_lifetime_secs`.

use std::{sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    config::{Config, SmtpSecurity},
    err,
    error::{Error, ErrorKind, Result},
    storage::{Batch, Db, StorageError, trees},
    util::{constant_time_eq, now_ms},
};

/// Wrong codes a session takes before it is spent.
pub const MAX_FAILURES: u32 = 5;
/// Codes sent per session (each higher `send_attempt` sends one).
const MAX_SENDS: usize = 5;
/// E-mails sent to one address an hour, across sessions.
const MAX_PER_ADDRESS: usize = 10;
/// How often expired sessions are swept, at most.
const SWEEP_EVERY_MS: u64 = 60_000;

/// What a verified address will be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Registration,
    AddThreepid,
    /// Resetting the password of the account the address belongs to.
    PasswordReset,
}

#[derive(Serialize, Deserialize)]
struct Session {
    purpose: Purpose,
    email: String,
    client_secret_hash: String,
    send_attempt: u64,
    /// Hashes of the codes sent; any of them is accepted.
    code_hashes: Vec<String>,
    sent_at: u64,
    validated_at: Option<u64>,
    failures: u32,
    /// Where the link page sends the browser once verified (allowed URLs only).
    next_link: Option<String>,
    /// For a password reset, the account whose password would change.
    #[serde(default)]
    account: Option<String>,
}

/// The outcome of offering a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// The address is verified; `next_link` is where the client asked the user to go.
    Verified { next_link: Option<String> },
    /// Wrong code; the session goes on.
    Wrong,
    /// No such session, it expired, or it took too many wrong codes.
    Gone,
}

pub struct Service {
    db: Db,
    config: Arc<Config>,
    mailer: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    /// Serialises read-modify-write of sessions (never held while sending).
    write: tokio::sync::Mutex<()>,
    /// When e-mails went to each address in the last hour (in memory).
    sent: std::sync::Mutex<std::collections::HashMap<String, Vec<u64>>>,
    /// When expired sessions were last swept.
    last_sweep: std::sync::atomic::AtomicU64,
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0xFF]);
    }
    hex::encode(hasher.finalize())
}

/// Parses an e-mail address, lowercased, as the server stores them.
pub fn normalise_address(email: &str) -> Result<String> {
    let address: lettre::Address =
        email.trim().parse().map_err(|_| err!(InvalidParam, "{email:?} is not an e-mail address"))?;
    Ok(address.to_string().to_lowercase())
}

impl Service {
    pub fn new(config: Arc<Config>, db: Db) -> Result<Self> {
        let smtp = &config.smtp;
        let mailer = if smtp.host.is_empty() {
            None
        } else {
            let builder = match smtp.security {
                SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host),
                SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
                SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)),
            }
            .map_err(|e| Error::internal(format!("smtp: {e}")))?;
            let mut builder = builder.port(smtp.port).timeout(Some(Duration::from_secs(20)));
            if !smtp.username.is_empty() {
                builder = builder.credentials(Credentials::new(smtp.username.clone(), smtp.password.clone()));
            }
            let from = smtp.from.parse().map_err(|e| Error::internal(format!("smtp.from: {e}")))?;
            Some((builder.build(), from))
        };
        Ok(Self {
            db,
            config,
            mailer,
            write: tokio::sync::Mutex::new(()),
            sent: Default::default(),
            last_sweep: Default::default(),
        })
    }

    /// Whether e-mail is sent, and so verified.
    pub fn enabled(&self) -> bool {
        self.mailer.is_some()
    }

    fn lifetime_ms(&self) -> u64 {
        self.config.smtp.token_lifetime_secs * 1000
    }

    fn load(&self, sid: &str) -> Result<Option<Session>> {
        let tree = self.db.tree(trees::SID_EMAILVALIDATION)?;
        let Some(bytes) = tree.get(sid.as_bytes())? else { return Ok(None) };
        let session = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt { tree: trees::SID_EMAILVALIDATION, reason: e.to_string() })?;
        Ok(Some(session))
    }

    fn live(&self, session: &Session, now: u64) -> bool {
        match session.validated_at {
            Some(at) => now < at + self.lifetime_ms(),
            None => now < session.sent_at + self.lifetime_ms() && session.failures < MAX_FAILURES,
        }
    }

    async fn save(&self, sid: &str, session: &Session) -> Result<()> {
        let mut batch = Batch::new();
        batch.insert(
            trees::SID_EMAILVALIDATION,
            sid.as_bytes().to_vec(),
            serde_json::to_vec(session).expect("serializes"),
        );
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Starts (or continues) a verification of `email` and sends a code,
    /// unless this `send_attempt` was already sent. Returns the session ID.
    /// The caller has checked that the address is free (or, for a password
    /// reset, whose it is: `account`, named in the e-mail and on the link
    /// page so that nobody approves a reset unknowingly).
    pub async fn request_token(
        &self,
        purpose: Purpose,
        email: &str,
        client_secret: &str,
        send_attempt: u64,
        next_link: Option<String>,
        account: Option<&str>,
    ) -> Result<String> {
        let Some((mailer, from)) = &self.mailer else {
            return Err(err!(ThreepidDenied, "This server does not send e-mail, so it cannot verify addresses"));
        };
        let email = normalise_address(email)?;
        let purpose_name = format!("{purpose:?}");
        // The session ID follows from what only this client knows.
        let sid = sha256_hex(&[&purpose_name, client_secret, &email])[..32].to_owned();
        let code = format!("{:08}", rand::rngs::OsRng.gen_range(0..100_000_000u32));
        let code_hash = sha256_hex(&[&code]);
        let previous_attempt = {
            let _guard = self.write.lock().await;
            self.sweep().await?;
            let now = now_ms();
            let mut session = match self.load(&sid)?.filter(|s| self.live(s, now)) {
                Some(s) if s.validated_at.is_some() || send_attempt <= s.send_attempt => return Ok(sid),
                Some(s) if s.code_hashes.len() >= MAX_SENDS => {
                    let limit = ErrorKind::LimitExceeded { retry_after_ms: self.lifetime_ms() };
                    return Err(Error::new(limit, "Too many codes were sent for this address; try again later"));
                }
                Some(s) => s,
                None => Session {
                    purpose,
                    email: email.clone(),
                    client_secret_hash: sha256_hex(&[client_secret]),
                    send_attempt,
                    code_hashes: Vec::new(),
                    sent_at: now,
                    validated_at: None,
                    failures: 0,
                    next_link: None,
                    account: account.map(str::to_owned),
                },
            };
            self.count_send_to(&email)?;
            let previous = session.send_attempt;
            session.send_attempt = send_attempt;
            session.sent_at = now;
            session.next_link = next_link;
            session.code_hashes.push(code_hash.clone());
            // Stored before sending: a code that reached the user always works.
            self.save(&sid, &session).await?;
            previous
        };

        // Sent without the lock, so a slow mail server delays only this request.
        let message = self.message(from, purpose, &email, &sid, &code, account)?;
        if let Err(e) = mailer.send(message).await {
            tracing::warn!(error = %e, "sending a verification e-mail failed");
            // Not sent: the attempt does not count, and a retry sends again.
            self.undo_send(&sid, &code_hash, previous_attempt).await;
            return Err(err!(Unknown, "The verification e-mail could not be sent; try again later"));
        }
        tracing::info!(sid, "sent a verification code");
        Ok(sid)
    }

    /// The e-mail for a code: what is being approved, the code, and the link.
    fn message(
        &self,
        from: &Mailbox,
        purpose: Purpose,
        email: &str,
        sid: &str,
        code: &str,
        account: Option<&str>,
    ) -> Result<Message> {
        let server = &self.config.server_name;
        let link = format!(
            "{}/_hearth/email/verify?sid={sid}&code={code}",
            self.config.client_base_url().trim_end_matches('/')
        );
        let (subject, what) = match purpose {
            Purpose::Registration => (
                format!("Confirm your e-mail address for {server}"),
                format!("Someone is creating an account on {server} with this e-mail address ({email})."),
            ),
            Purpose::AddThreepid => (
                format!("Confirm your e-mail address for {server}"),
                format!("Someone asked to add this e-mail address ({email}) to an account on {server}."),
            ),
            Purpose::PasswordReset => (
                format!("Reset your password on {server}"),
                format!(
                    "Someone asked to reset the password of the account {} on {server}.",
                    account.unwrap_or("that uses this address")
                ),
            ),
        };
        let text = format!(
            "{what}\n\nIf it is you, your code for {server} is {code}.\n\nOr open this link to confirm:\n{link}\n\n\
             The code is valid for {} minutes. If you did not ask for it, ignore this e-mail: nothing changes.\n",
            self.config.smtp.token_lifetime_secs / 60
        );
        let to: Mailbox = email.parse().map_err(|_| err!(InvalidParam, "{email:?} is not an e-mail address"))?;
        Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| Error::internal(format!("building the e-mail: {e}")))
    }

    /// Takes back a code whose e-mail could not be sent.
    async fn undo_send(&self, sid: &str, code_hash: &str, previous_attempt: u64) {
        let _guard = self.write.lock().await;
        let Ok(Some(mut session)) = self.load(sid) else { return };
        session.code_hashes.retain(|h| h != code_hash);
        let result = if session.code_hashes.is_empty() {
            let mut batch = Batch::new();
            batch.remove(trees::SID_EMAILVALIDATION, sid.as_bytes().to_vec());
            self.db.commit(batch).await.map_err(Error::from)
        } else {
            session.send_attempt = previous_attempt;
            self.save(sid, &session).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not take back an unsent verification code");
        }
    }

    /// Counts an e-mail to `email` against [`MAX_PER_ADDRESS`] an hour,
    /// across sessions (each new client secret starts a session).
    fn count_send_to(&self, email: &str) -> Result<()> {
        let now = now_ms();
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.retain(|_, times| {
            times.retain(|t| now - *t < 3_600_000);
            !times.is_empty()
        });
        let times = sent.entry(email.to_owned()).or_default();
        if times.len() >= MAX_PER_ADDRESS {
            let retry_after_ms = times[0] + 3_600_000 - now;
            let limit = ErrorKind::LimitExceeded { retry_after_ms };
            return Err(Error::new(limit, "Too many codes were sent to this address; try again later"));
        }
        times.push(now);
        Ok(())
    }

    /// What a session is for, its address, and the account it names: the
    /// link page says what the user approves.
    pub fn describe(&self, sid: &str) -> Result<Option<(Purpose, String, Option<String>)>> {
        Ok(self.load(sid)?.filter(|s| self.live(s, now_ms())).map(|s| (s.purpose, s.email, s.account)))
    }

    /// Offers a code for a session. `client_secret` is checked when given
    /// (the API); the link in the e-mail carries the session and code only.
    pub async fn submit_code(&self, sid: &str, client_secret: Option<&str>, code: &str) -> Result<Submitted> {
        let _guard = self.write.lock().await;
        let now = now_ms();
        let Some(mut session) = self.load(sid)?.filter(|s| self.live(s, now)) else {
            return Ok(Submitted::Gone);
        };
        if let Some(secret) = client_secret
            && !constant_time_eq(sha256_hex(&[secret]).as_bytes(), session.client_secret_hash.as_bytes())
        {
            return Ok(Submitted::Gone);
        }
        if session.validated_at.is_some() {
            return Ok(Submitted::Verified { next_link: session.next_link });
        }
        let offered = sha256_hex(&[&code.chars().filter(char::is_ascii_digit).collect::<String>()]);
        if session.code_hashes.iter().any(|h| constant_time_eq(h.as_bytes(), offered.as_bytes())) {
            session.validated_at = Some(now);
            self.save(sid, &session).await?;
            return Ok(Submitted::Verified { next_link: session.next_link });
        }
        session.failures += 1;
        self.save(sid, &session).await?;
        Ok(if session.failures >= MAX_FAILURES { Submitted::Gone } else { Submitted::Wrong })
    }

    /// The address a verified, live session proves, if the client secret
    /// matches and the session was for `purpose`.
    pub fn verified_email(&self, sid: &str, client_secret: &str, purpose: Purpose) -> Result<Option<String>> {
        let Some(session) = self.load(sid)?.filter(|s| self.live(s, now_ms())) else { return Ok(None) };
        let secret_ok =
            constant_time_eq(sha256_hex(&[client_secret]).as_bytes(), session.client_secret_hash.as_bytes());
        Ok((secret_ok && session.purpose == purpose && session.validated_at.is_some()).then_some(session.email))
    }

    /// The address a live session is verifying.
    pub fn session_address(&self, sid: &str) -> Result<Option<String>> {
        Ok(self.load(sid)?.filter(|s| self.live(s, now_ms())).map(|s| s.email))
    }

    /// Ends a session whose address was used. Called after the change it
    /// allowed is stored, so a failure is logged rather than reported (the
    /// session then simply expires).
    pub async fn finish(&self, sid: &str) {
        let _guard = self.write.lock().await;
        let mut batch = Batch::new();
        batch.remove(trees::SID_EMAILVALIDATION, sid.as_bytes().to_vec());
        if let Err(e) = self.db.commit(batch).await {
            tracing::warn!(error = %e, "could not remove a used verification session");
        }
    }

    /// Removes expired sessions, at most once a minute (the caller holds `write`).
    async fn sweep(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        if now.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) < SWEEP_EVERY_MS {
            return Ok(());
        }
        self.last_sweep.store(now, Ordering::Relaxed);
        let mut batch = Batch::new();
        for item in self.db.tree(trees::SID_EMAILVALIDATION)?.scan_prefix(b"") {
            let (key, value) = item?;
            let live = serde_json::from_slice::<Session>(&value).is_ok_and(|s| self.live(&s, now));
            if !live {
                batch.remove(trees::SID_EMAILVALIDATION, key.to_vec());
            }
        }
        if !batch.ops.is_empty() {
            self.db.commit(batch).await?;
        }
        Ok(())
    }
}
