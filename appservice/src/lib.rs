//! A library for Matrix application services (bridges and bots).
//!
//! It starts with the registration: the namespaces an application service
//! claims, compiled once and matched against user IDs, room aliases and
//! room IDs the way a homeserver decides who owns what.

use ruma::api::appservice::{Namespace, Registration};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("invalid regular expression {regex:?} in the {kind} namespace: {source}")]
    BadRegex { kind: &'static str, regex: String, source: regex::Error },
    #[error("invalid registration: {0}")]
    Invalid(String),
}

struct Compiled {
    exclusive: bool,
    regex: regex::Regex,
}

fn compile(kind: &'static str, namespaces: &[Namespace]) -> Result<Vec<Compiled>, RegistrationError> {
    namespaces
        .iter()
        .map(|n| {
            // Namespaces match whole identifiers.
            let regex = regex::Regex::new(&format!("^(?:{})$", n.regex))
                .map_err(|source| RegistrationError::BadRegex { kind, regex: n.regex.clone(), source })?;
            Ok(Compiled { exclusive: n.exclusive, regex })
        })
        .collect()
}

/// A registration with its namespaces compiled.
pub struct AppService {
    pub registration: Registration,
    users: Vec<Compiled>,
    aliases: Vec<Compiled>,
    rooms: Vec<Compiled>,
}

/// Who claims an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    None,
    Shared,
    Exclusive,
}

fn claim(list: &[Compiled], id: &str) -> Claim {
    let mut found = Claim::None;
    for c in list.iter().filter(|c| c.regex.is_match(id)) {
        if c.exclusive {
            return Claim::Exclusive;
        }
        found = Claim::Shared;
    }
    found
}

impl AppService {
    /// Validates and compiles a registration.
    pub fn new(registration: Registration) -> Result<Self, RegistrationError> {
        if registration.as_token.is_empty() || registration.hs_token.is_empty() {
            return Err(RegistrationError::Invalid("as_token and hs_token must not be empty".into()));
        }
        if registration.as_token == registration.hs_token {
            return Err(RegistrationError::Invalid("as_token and hs_token must differ".into()));
        }
        Ok(Self {
            users: compile("users", &registration.namespaces.users)?,
            aliases: compile("aliases", &registration.namespaces.aliases)?,
            rooms: compile("rooms", &registration.namespaces.rooms)?,
            registration,
        })
    }

    /// Parses a registration given as JSON.
    pub fn from_json(text: &str) -> Result<Self, RegistrationError> {
        let registration: Registration =
            serde_json::from_str(text).map_err(|e| RegistrationError::Invalid(e.to_string()))?;
        Self::new(registration)
    }

    /// The claim on a user ID. The sender user is always exclusively the service's.
    pub fn user_claim(&self, user_id: &str, server_name: &str) -> Claim {
        if user_id == format!("@{}:{server_name}", self.registration.sender_localpart) {
            return Claim::Exclusive;
        }
        claim(&self.users, user_id)
    }

    pub fn alias_claim(&self, alias: &str) -> Claim {
        claim(&self.aliases, alias)
    }

    pub fn room_claim(&self, room_id: &str) -> Claim {
        claim(&self.rooms, room_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRATION: &str = r##"{
        "id": "irc-bridge",
        "url": "http://127.0.0.1:9000",
        "as_token": "as-secret",
        "hs_token": "hs-secret",
        "sender_localpart": "ircbot",
        "namespaces": {
            "users": [{ "exclusive": true, "regex": "@irc_.*:localhost" }, { "exclusive": false, "regex": "@shared_.*:localhost" }],
            "aliases": [{ "exclusive": false, "regex": "#irc_.*:localhost" }],
            "rooms": []
        }
    }"##;

    #[test]
    fn namespaces_claim_whole_identifiers() {
        let service = AppService::from_json(REGISTRATION).unwrap();
        assert_eq!(service.user_claim("@irc_alice:localhost", "localhost"), Claim::Exclusive);
        assert_eq!(service.user_claim("@shared_bob:localhost", "localhost"), Claim::Shared);
        assert_eq!(service.user_claim("@ircbot:localhost", "localhost"), Claim::Exclusive);
        assert_eq!(service.user_claim("@alice:localhost", "localhost"), Claim::None);
        // The regex must match the whole ID, not a substring.
        assert_eq!(service.user_claim("@x@irc_a:localhost.evil", "localhost"), Claim::None);
        assert_eq!(service.alias_claim("#irc_chan:localhost"), Claim::Shared);
        assert_eq!(service.room_claim("!abc:localhost"), Claim::None);
    }

    #[test]
    fn invalid_registrations_are_refused() {
        let bad_regex = REGISTRATION.replace("@irc_.*:localhost", "@irc_(:localhost");
        assert!(matches!(AppService::from_json(&bad_regex), Err(RegistrationError::BadRegex { kind: "users", .. })));
        let same_tokens = REGISTRATION.replace("hs-secret", "as-secret");
        assert!(matches!(AppService::from_json(&same_tokens), Err(RegistrationError::Invalid(_))));
        assert!(AppService::from_json("{}").is_err());
    }
}
