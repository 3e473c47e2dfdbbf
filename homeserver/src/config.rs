//! Configuration: embedded documented defaults, then an optional TOML file,
//! then `HEARTH_*` environment variables, then validation.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// The documented default configuration, compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/homeserver.toml");

/// Prefix of environment variables that override single options.
pub const ENV_PREFIX: &str = "HEARTH_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server_name: String,
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub well_known: WellKnown,
    pub registration: Registration,
    pub auth: Auth,
    pub rate_limits: RateLimits,
    pub limits: Limits,
    pub storage: Storage,
    pub audit: Audit,
    pub mfa: Mfa,
    pub sso: Sso,
    pub smtp: Smtp,
    pub admin: Admin,
    pub logging: Logging,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub https: SocketAddr,
    pub http: String,
    pub http_allow_non_loopback: bool,
    pub http_trust_forwarded_for: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub certificate: String,
    pub private_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WellKnown {
    pub client_base_url: String,
    pub server: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub enabled: bool,
    pub tokens: Vec<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("enabled", &self.enabled)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub access_token_lifetime_secs: u64,
    pub lockout_threshold: u32,
    pub lockout_secs: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub min_password_length: usize,
    pub min_password_classes: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub login_per_second: f64,
    pub login_burst: u32,
    pub registration_per_second: f64,
    pub registration_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_request_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The database's page cache, in MiB.
    pub cache_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sso {
    /// URL prefixes the browser sign-in may send a login token to.
    pub redirect_allowlist: Vec<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    /// Empty: e-mail is not sent (addresses stay unverified).
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: String,
    pub password: String,
    pub from: String,
    pub token_lifetime_secs: u64,
}

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    Starttls,
    Tls,
    None,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &if self.password.is_empty() { "" } else { "[redacted]" })
            .field("from", &self.from)
            .field("token_lifetime_secs", &self.token_lifetime_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mfa {
    /// The file holding the key that seals TOTP secrets; empty: data_dir/mfa.key.
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub level: String,
}

/// A configuration problem, naming the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration in {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid value for option `{option}`: {message}")]
    Invalid { option: String, message: String },
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })
}

/// Merges `over` into `base`, recursing into tables.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Reads an environment value as TOML (numbers, booleans, arrays), falling back to a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = parse_table(DEFAULT_CONFIG, "the built-in defaults")?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            let over = parse_table(&text, &path.display().to_string())?;
            // Reject unknown options before merging, so the message names the file.
            check_known(&table, &over, "")?;
            merge(&mut table, over);
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if rest == "CONFIG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let option = path.join(".");
            let mut cursor = &mut table;
            for section in &path[..path.len() - 1] {
                cursor = match cursor.get_mut(section) {
                    Some(toml::Value::Table(t)) => t,
                    _ => {
                        return Err(ConfigError::Invalid {
                            option: option.clone(),
                            message: format!("{name} names no known option"),
                        });
                    }
                };
            }
            let leaf = &path[path.len() - 1];
            let Some(old) = cursor.get(leaf) else {
                return Err(ConfigError::Invalid { option, message: format!("{name} names no known option") });
            };
            let mut value = env_value(&raw);
            // A string option keeps the raw text even if it looks like a number.
            if old.is_str() {
                value = toml::Value::String(raw.clone());
            }
            cursor.insert(leaf.clone(), value);
        }
        let text = toml::to_string(&table)
            .map_err(|e| ConfigError::Parse { origin: "merged".into(), message: e.to_string() })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { origin: "the merged configuration".into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |option: &str, message: String| Err(ConfigError::Invalid { option: option.to_owned(), message });
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return invalid("server_name", format!("{:?} is not a valid Matrix server name", self.server_name));
        }
        if self.tls.certificate.is_empty() != self.tls.private_key.is_empty() {
            return invalid("tls.certificate", "tls.certificate and tls.private_key must be set together".into());
        }
        if let Some(addr) = self.http_listener()?
            && !addr.ip().is_loopback()
            && !self.listen.http_allow_non_loopback
        {
            return invalid(
                "listen.http",
                format!(
                    "{addr} is not a loopback address; set listen.http_allow_non_loopback = true to expose plain HTTP"
                ),
            );
        }
        if !self.admin.bind.ip().is_loopback() {
            return invalid("admin.bind", format!("{} is not a loopback address", self.admin.bind));
        }
        let base = &self.well_known.client_base_url;
        if !(base.is_empty() || base.starts_with("https://") || base.starts_with("http://")) {
            return invalid("well_known.client_base_url", "must be an http(s) URL".into());
        }
        if !(1..=1024 * 1024).contains(&self.storage.cache_mib) {
            return invalid("storage.cache_mib", "must be between 1 and 1048576".into());
        }
        if self.auth.lockout_threshold == 0 {
            return invalid("auth.lockout_threshold", "must be at least 1".into());
        }
        if self.auth.argon2_memory_kib < 8 * self.auth.argon2_parallelism || self.auth.argon2_iterations == 0 {
            return invalid("auth.argon2_memory_kib", "argon2 parameters out of range".into());
        }
        for (option, rate, burst) in [
            ("rate_limits.login_per_second", self.rate_limits.login_per_second, self.rate_limits.login_burst),
            (
                "rate_limits.registration_per_second",
                self.rate_limits.registration_per_second,
                self.rate_limits.registration_burst,
            ),
        ] {
            if !(rate.is_finite() && rate > 0.0) || burst == 0 {
                return invalid(option, "rate must be positive and burst at least 1".into());
            }
        }
        if self.limits.max_request_bytes < 1024 {
            return invalid("limits.max_request_bytes", "must be at least 1024".into());
        }
        if self.registration.tokens.iter().any(|t| t.is_empty() || t.len() > 64) {
            return invalid("registration.tokens", "tokens must be 1 to 64 characters".into());
        }
        if self.auth.min_password_classes > 4 {
            return invalid("auth.min_password_classes", "must be between 0 and 4".into());
        }
        if !self.smtp.host.is_empty() {
            if self.smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                return invalid("smtp.from", format!("{:?} is not an e-mail address", self.smtp.from));
            }
            let loopback = matches!(self.smtp.host.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]");
            if self.smtp.security == SmtpSecurity::None && !loopback {
                return invalid("smtp.security", "\"none\" (plain SMTP) is allowed only to a loopback host".into());
            }
            if !(60..=7 * 24 * 3600).contains(&self.smtp.token_lifetime_secs) {
                return invalid("smtp.token_lifetime_secs", "must be between 60 and 604800".into());
            }
        }
        if self.logging.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return invalid("logging.level", format!("{:?} is not a valid log filter", self.logging.level));
        }
        Ok(())
    }

    /// The plain-HTTP listener address, if enabled.
    pub fn http_listener(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.http.is_empty() {
            return Ok(None);
        }
        self.listen.http.parse().map(Some).map_err(|_| ConfigError::Invalid {
            option: "listen.http".into(),
            message: format!("{:?} is not an address:port", self.listen.http),
        })
    }

    pub fn audit_path(&self) -> PathBuf {
        if self.audit.path.is_empty() { self.data_dir.join("audit.log") } else { PathBuf::from(&self.audit.path) }
    }

    pub fn mfa_key_path(&self) -> PathBuf {
        if self.mfa.key_file.is_empty() { self.data_dir.join("mfa.key") } else { PathBuf::from(&self.mfa.key_file) }
    }

    pub fn client_base_url(&self) -> String {
        if self.well_known.client_base_url.is_empty() {
            format!("https://{}:{}", self.server_name, self.listen.https.port())
        } else {
            self.well_known.client_base_url.clone()
        }
    }
}

/// Fails on any key of `over` that `base` (the defaults) does not have.
fn check_known(base: &toml::Table, over: &toml::Table, path: &str) -> Result<(), ConfigError> {
    for (k, v) in over {
        let name = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        match (base.get(k), v) {
            (None, _) => return Err(ConfigError::Invalid { option: name, message: "unknown option".into() }),
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => check_known(b, o, &name)?,
            (Some(toml::Value::Table(_)), _) => {
                return Err(ConfigError::Invalid { option: name, message: "must be a table".into() });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_load_and_match_the_documented_values() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.listen.https, "127.0.0.1:8448".parse().unwrap());
        assert!(c.registration.enabled);
        assert_eq!(c.http_listener().unwrap(), None);
    }

    #[test]
    fn environment_overrides_single_options() {
        let c = Config::load(
            None,
            env(&[
                ("HEARTH_SERVER_NAME", "example.org"),
                ("HEARTH_REGISTRATION__ENABLED", "false"),
                ("HEARTH_AUTH__LOCKOUT_THRESHOLD", "3"),
                ("HEARTH_REGISTRATION__TOKENS", "[\"abc\"]"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server_name, "example.org");
        assert!(!c.registration.enabled);
        assert_eq!(c.auth.lockout_threshold, 3);
        assert_eq!(c.registration.tokens, vec!["abc".to_owned()]);
    }

    #[test]
    fn file_overrides_and_unknown_options_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "server_name = \"hs.test\"\n[listen]\nhttps = \"127.0.0.1:9000\"\n").unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c.server_name, "hs.test");
        assert_eq!(c.listen.https.port(), 9000);

        std::fs::write(&path, "[listen]\nhttps_port = 1\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("listen.https_port"), "{err}");

        let err = Config::load(None, env(&[("HEARTH_NOPE", "1")])).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn smtp_settings_are_checked_and_the_password_is_not_printed() {
        let smtp = |extra: &[(&str, &str)]| {
            let mut all = vec![("HEARTH_SMTP__HOST", "mail.example.org"), ("HEARTH_SMTP__PASSWORD", "hunter2 secret")];
            all.extend_from_slice(extra);
            Config::load(None, env(&all))
        };
        let c = smtp(&[]).unwrap();
        assert_eq!(c.smtp.security, SmtpSecurity::Starttls);
        assert!(!format!("{c:?}").contains("hunter2"), "the SMTP password is redacted");
        let err = smtp(&[("HEARTH_SMTP__SECURITY", "none")]).unwrap_err().to_string();
        assert!(err.contains("smtp.security"), "plain SMTP to a remote host: {err}");
        assert!(smtp(&[("HEARTH_SMTP__SECURITY", "none"), ("HEARTH_SMTP__HOST", "127.0.0.1")]).is_ok());
        let err = smtp(&[("HEARTH_SMTP__SECURITY", "ssl")]).unwrap_err().to_string();
        assert!(err.contains("security"), "{err}");
        let err = smtp(&[("HEARTH_SMTP__FROM", "not an address")]).unwrap_err().to_string();
        assert!(err.contains("smtp.from"), "{err}");
        let err = Config::load(None, env(&[("HEARTH_AUTH__MIN_PASSWORD_CLASSES", "5")])).unwrap_err().to_string();
        assert!(err.contains("auth.min_password_classes"), "{err}");
    }

    #[test]
    fn invalid_values_fail_naming_the_option() {
        let err = Config::load(None, env(&[("HEARTH_SERVER_NAME", "not a name!")])).unwrap_err().to_string();
        assert!(err.contains("server_name"), "{err}");
        let err = Config::load(None, env(&[("HEARTH_LISTEN__HTTP", "0.0.0.0:8008")])).unwrap_err().to_string();
        assert!(err.contains("listen.http"), "{err}");
        let err = Config::load(None, env(&[("HEARTH_REGISTRATION__ENABLED", "maybe")])).unwrap_err().to_string();
        assert!(err.contains("enabled"), "{err}");
        let err = Config::load(None, env(&[("HEARTH_LISTEN__HTTPS", "nowhere")])).unwrap_err().to_string();
        assert!(err.contains("https"), "{err}");
    }

    #[test]
    fn registration_tokens_are_redacted_in_debug() {
        let c = Config::load(None, env(&[("HEARTH_REGISTRATION__TOKENS", "[\"sekrit\"]")])).unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
