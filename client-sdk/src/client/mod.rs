//! The client: a session on a homeserver, its sync loop, rooms and
//! messages, with end-to-end encryption applied automatically.

mod events;
mod http;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use ruma::api::Direction;
use ruma::api::client::{
    account::whoami, alias::get_alias, device::get_devices, membership::get_member_events, membership::invite_user,
    membership::join_room_by_id_or_alias, membership::leave_room, message::get_message_events,
    message::send_message_event, profile::set_profile_field, room::create_room, session::login, session::logout,
    state::get_state_event_for_key, sync::sync_events,
};
use ruma::events::{AnyInitialStateEvent, StateEventType};
use ruma::profile::ProfileFieldValue;
use ruma::serde::Raw;
use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId, RoomId, TransactionId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex as AsyncMutex;

pub use events::{Encryption, Membership, RoomEvent, RoomInfo, SyncBatch};

use crate::ClientError;
use crate::crypto::{
    CryptoMachine, DEFAULT_ROTATION_PERIOD_MS, DEFAULT_ROTATION_PERIOD_MSGS, DecryptionError, MEGOLM_V1,
    OutgoingRequest, ResponseOutcome, RoomSettings, SyncChanges,
};
use crate::store::Store;
use crate::tls::TlsTrust;
use http::{Http, UiaSecrets};

/// Hearth's login type for accounts with a second factor.
pub const LOGIN_PASSWORD_TOTP: &str = "org.hearth.login.password_totp";

/// Store value names.
const SESSION: &str = "session";
const CRYPTO: &str = "crypto";
const SYNC_TOKEN: &str = "sync_token";
const ROOMS: &str = "rooms";
/// How many rounds of crypto requests one operation may take (keys query,
/// then claim, then the room keys).
const REQUEST_ROUNDS: usize = 8;
/// How many undecryptable events are kept to try again when keys arrive.
const MAX_UNDECRYPTED: usize = 1000;
/// Backoff of the sync loop after an error.
const SYNC_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const SYNC_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A logged-in session, kept (encrypted) in the store. Its `Debug` output
/// leaves the access token out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The homeserver's base URL.
    pub homeserver: String,
    /// The user.
    pub user_id: OwnedUserId,
    /// This device.
    pub device_id: OwnedDeviceId,
    /// The access token. It is a secret: it lives only in the encrypted
    /// store and in requests to the homeserver.
    access_token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("homeserver", &self.homeserver)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// What a new account is registered with. Its `Debug` output leaves the
/// password and the registration token out.
#[derive(Clone, Default)]
pub struct Registration {
    /// The localpart of the new user ID.
    pub username: String,
    /// The password.
    pub password: String,
    /// The display name, set on the profile.
    pub display_name: Option<String>,
    /// The e-mail address the homeserver keeps with the account (a Hearth
    /// registration field other servers ignore).
    pub email: Option<String>,
    /// A registration token, for servers that require one.
    pub registration_token: Option<String>,
    /// The display name of this first device.
    pub device_display_name: Option<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("email", &self.email)
            .field("device_display_name", &self.device_display_name)
            .finish_non_exhaustive()
    }
}

/// The options of a new room.
#[derive(Debug, Clone, Default)]
pub struct NewRoom {
    /// The room name.
    pub name: Option<String>,
    /// Whether the room is end-to-end encrypted (Megolm) from the start.
    pub encrypted: bool,
    /// Users invited right away.
    pub invite: Vec<OwnedUserId>,
}

/// A device of the logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device ID.
    pub device_id: OwnedDeviceId,
    /// Its display name.
    pub display_name: Option<String>,
    /// When it was last seen, in milliseconds since the epoch.
    pub last_seen_ts: Option<u64>,
    /// Whether it is this client's device.
    pub is_this_device: bool,
}

/// One page of a room's history.
#[derive(Debug, Clone, Default)]
pub struct MessagesPage {
    /// The events, newest first when paging backwards.
    pub events: Vec<RoomEvent>,
    /// The token for the next page, if there is more.
    pub next: Option<String>,
}

/// Client state that changes with every sync.
#[derive(Default)]
struct SyncState {
    sync_token: Option<String>,
    rooms: BTreeMap<OwnedRoomId, RoomInfo>,
    /// Encrypted events whose room key had not arrived, to try again.
    undecrypted: Vec<(OwnedRoomId, Value)>,
}

/// What a round of crypto requests brought back.
#[derive(Default)]
struct Collected {
    outcome: ResponseOutcome,
    room_keys_arrived: bool,
}

impl Collected {
    fn absorb(&mut self, outcome: ResponseOutcome) {
        self.room_keys_arrived |= !outcome.room_keys.is_empty();
        self.outcome.refused_devices.extend(outcome.refused_devices);
        self.outcome.failures.extend(outcome.failures);
    }
}

/// A Matrix client with end-to-end encryption.
///
/// Its state (the session, the device's crypto state, the sync token and
/// the rooms it knows) lives in an encrypted [`Store`]; a client opened on
/// the same store later carries on the same session. Sending into an
/// encrypted room encrypts; events received are decrypted; events that
/// cannot be decrypted are handed over with the reason.
///
/// ```no_run
/// # async fn run() -> Result<(), hearth_client_sdk::ClientError> {
/// use hearth_client_sdk::{Client, NewRoom, Store, TlsTrust};
///
/// let store = Store::open("alice-store".as_ref(), "store passphrase")?;
/// let client = Client::new("https://matrix.example.org", &TlsTrust::System, store)?;
/// if !client.logged_in() {
///     client.login("alice", "password").await?;
/// }
/// let room = client.create_room(NewRoom { name: Some("Plans".into()), encrypted: true, ..Default::default() }).await?;
/// client.send_text(&room, "hello, encrypted").await?;
/// loop {
///     for event in client.sync().await?.events {
///         if let Some(text) = event.text() {
///             println!("{}: {text}", event.sender);
///         }
///     }
/// }
/// # }
/// ```
pub struct Client {
    http: Http,
    store: Store,
    session: Mutex<Option<Session>>,
    machine: AsyncMutex<Option<CryptoMachine>>,
    state: Mutex<SyncState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("homeserver", &self.http.base_url()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the homeserver at `homeserver` (its base URL), keeping
    /// its state in `store`. If the store holds a session on the same
    /// homeserver, the client is logged in with it.
    pub fn new(homeserver: &str, trust: &TlsTrust, store: Store) -> Result<Self, ClientError> {
        let http = Http::new(homeserver, trust)?;
        let mut session: Option<Session> = store.get(SESSION)?;
        if session.as_ref().is_some_and(|s| s.homeserver.trim_end_matches('/') != http.base_url()) {
            session = None;
        }
        let mut machine = None;
        let mut state = SyncState::default();
        if let Some(session) = &session {
            http.set_access_token(Some(session.access_token.clone()));
            machine = match store.get_bytes(CRYPTO)? {
                Some(bytes) => Some(CryptoMachine::from_pickle(&bytes)?),
                None => Some(CryptoMachine::new(&session.user_id, &session.device_id)),
            };
            state.sync_token = store.get(SYNC_TOKEN)?;
            state.rooms = store.get(ROOMS)?.unwrap_or_default();
        }
        Ok(Self {
            http,
            store,
            session: Mutex::new(session),
            machine: AsyncMutex::new(machine),
            state: Mutex::new(state),
        })
    }

    /// Whether the client has a session.
    pub fn logged_in(&self) -> bool {
        self.session().is_some()
    }

    /// The session, if logged in.
    pub fn session(&self) -> Option<Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The logged-in user.
    pub fn user_id(&self) -> Result<OwnedUserId, ClientError> {
        self.session().map(|s| s.user_id).ok_or(ClientError::NotLoggedIn)
    }

    /// This client's device ID.
    pub fn device_id(&self) -> Result<OwnedDeviceId, ClientError> {
        self.session().map(|s| s.device_id).ok_or(ClientError::NotLoggedIn)
    }

    /// The Ed25519 fingerprint key of this device, as other users see it.
    pub async fn ed25519_key(&self) -> Result<String, ClientError> {
        Ok(self.machine.lock().await.as_ref().ok_or(ClientError::NotLoggedIn)?.ed25519_key())
    }

    // ----- Account and session -----

    /// Registers a new account (completing the `m.login.dummy` or
    /// `m.login.registration_token` stage of user-interactive auth) and
    /// logs in with it. The device keys are generated here and their public
    /// parts uploaded.
    pub async fn register(&self, registration: &Registration) -> Result<(), ClientError> {
        let mut body = json!({
            "username": registration.username,
            "password": registration.password,
            "initial_device_display_name": registration.device_display_name.as_deref().unwrap_or("hearth client"),
        });
        if let Some(name) = &registration.display_name {
            body["displayname"] = json!(name);
        }
        if let Some(email) = &registration.email {
            body["email"] = json!(email);
        }
        let secrets =
            UiaSecrets { password: None, registration_token: registration.registration_token.as_deref(), code: None };
        let answer = self.http.with_uia("POST", "/_matrix/client/v3/register", body, &secrets).await?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Response(format!("register: no {name}")))
        };
        let user_id = UserId::parse(field("user_id")?).map_err(|e| ClientError::Response(e.to_string()))?;
        let device_id: OwnedDeviceId = field("device_id")?.into();
        self.start_session(user_id.clone(), device_id, field("access_token")?).await?;
        if let Some(name) = &registration.display_name {
            self.set_display_name(name).await?;
        }
        Ok(())
    }

    /// Logs in with a user ID or localpart and a password, as a new device
    /// whose keys are generated here.
    pub async fn login(&self, user: &str, password: &str) -> Result<(), ClientError> {
        let identifier = ruma::api::client::uiaa::UserIdentifier::Matrix(
            ruma::api::client::uiaa::MatrixUserIdentifier::new(user.to_owned()),
        );
        let mut request = login::v3::Request::new(login::v3::LoginInfo::Password(login::v3::Password::new(
            identifier,
            password.to_owned(),
        )));
        request.initial_device_display_name = Some("hearth client".to_owned());
        let response = self.http.send(request).await?;
        self.start_session(response.user_id, response.device_id, response.access_token).await
    }

    /// Logs in to an account with a second factor, with the password and a
    /// current TOTP code (or a recovery code), through Hearth's
    /// `org.hearth.login.password_totp` login type.
    pub async fn login_with_code(&self, user: &str, password: &str, code: &str) -> Result<(), ClientError> {
        let body = json!({
            "type": LOGIN_PASSWORD_TOTP,
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
            "code": code,
            "initial_device_display_name": "hearth client",
        });
        let answer = self.http.raw("POST", "/_matrix/client/v3/login", Some(&body)).await?;
        let field = |name: &str| {
            answer[name].as_str().map(str::to_owned).ok_or_else(|| ClientError::Response(format!("login: no {name}")))
        };
        let user_id = UserId::parse(field("user_id")?).map_err(|e| ClientError::Response(e.to_string()))?;
        self.start_session(user_id, field("device_id")?.into(), field("access_token")?).await
    }

    async fn start_session(
        &self,
        user_id: OwnedUserId,
        device_id: OwnedDeviceId,
        token: String,
    ) -> Result<(), ClientError> {
        let session = Session {
            homeserver: self.http.base_url().to_owned(),
            user_id: user_id.clone(),
            device_id: device_id.clone(),
            access_token: token,
        };
        self.http.set_access_token(Some(session.access_token.clone()));
        // The new device's keys are stored before they are published, so
        // that a crash cannot leave published keys whose private parts are
        // lost.
        let mut machine = CryptoMachine::new(&user_id, &device_id);
        self.store.put(SESSION, &session)?;
        self.store.put_bytes(CRYPTO, &machine.pickle()?)?;
        self.store.remove(SYNC_TOKEN)?;
        self.store.remove(ROOMS)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = SyncState::default();
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
        let result = self.run_outgoing(&mut machine).await;
        self.store.put_bytes(CRYPTO, &machine.pickle()?)?;
        *self.machine.lock().await = Some(machine);
        result.map(|_| ())
    }

    /// Logs this device out on the server and forgets the session, its keys
    /// and its state locally.
    pub async fn logout(&self) -> Result<(), ClientError> {
        if !self.logged_in() {
            return Err(ClientError::NotLoggedIn);
        }
        match self.http.send(logout::v3::Request::new()).await {
            // A token the server no longer knows is logged out already.
            Err(e) if e.errcode() != Some("M_UNKNOWN_TOKEN") => return Err(e),
            _ => {}
        }
        for name in [SESSION, CRYPTO, SYNC_TOKEN, ROOMS] {
            self.store.remove(name)?;
        }
        self.http.set_access_token(None);
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.machine.lock().await = None;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = SyncState::default();
        Ok(())
    }

    /// Asks the server who the access token belongs to.
    pub async fn whoami(&self) -> Result<OwnedUserId, ClientError> {
        Ok(self.http.send(whoami::v3::Request::new()).await?.user_id)
    }

    /// The user's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let own = self.device_id()?;
        let response = self.http.send(get_devices::v3::Request::new()).await?;
        Ok(response
            .devices
            .into_iter()
            .map(|device| DeviceInfo {
                is_this_device: device.device_id == own,
                last_seen_ts: device.last_seen_ts.map(|ts| u64::from(ts.0)),
                display_name: device.display_name,
                device_id: device.device_id,
            })
            .collect())
    }

    /// Signs another of the user's devices out, confirming with the
    /// password. An account with a second factor needs
    /// [`Client::delete_device_with_code`].
    pub async fn delete_device(&self, device_id: &str, password: &str) -> Result<(), ClientError> {
        self.delete_device_with_code(device_id, password, None).await
    }

    /// Signs another of the user's devices out, confirming with the
    /// password and, for an account with a second factor, a current TOTP
    /// code or a recovery code.
    pub async fn delete_device_with_code(
        &self,
        device_id: &str,
        password: &str,
        code: Option<&str>,
    ) -> Result<(), ClientError> {
        let user = self.user_id()?;
        let path = format!("/_matrix/client/v3/devices/{}", urlencode(device_id));
        let secrets = UiaSecrets { password: Some((user.as_str(), password)), registration_token: None, code };
        self.http.with_uia("DELETE", &path, json!({}), &secrets).await.map(|_| ())
    }

    /// Sets the user's display name.
    pub async fn set_display_name(&self, name: &str) -> Result<(), ClientError> {
        let request =
            set_profile_field::v3::Request::new(self.user_id()?, ProfileFieldValue::DisplayName(name.to_owned()));
        self.http.send_with_retry(request).await.map(|_| ())
    }

    /// A user's display name, if they have one.
    pub async fn display_name(&self, user_id: &UserId) -> Result<Option<String>, ClientError> {
        let path = format!("/_matrix/client/v3/profile/{}/displayname", urlencode(user_id.as_str()));
        match self.http.raw("GET", &path, None).await {
            Ok(answer) => Ok(answer["displayname"].as_str().map(str::to_owned)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ----- Rooms -----

    /// Creates a room (a private chat), encrypted if asked, and returns its
    /// ID.
    pub async fn create_room(&self, options: NewRoom) -> Result<OwnedRoomId, ClientError> {
        let mut request = create_room::v3::Request::new();
        request.name = options.name;
        request.invite = options.invite;
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        if options.encrypted {
            let event = json!({ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": MEGOLM_V1 } });
            let raw: Raw<AnyInitialStateEvent> = Raw::from_json(
                serde_json::value::to_raw_value(&event).map_err(|e| ClientError::Config(e.to_string()))?,
            );
            request.initial_state.push(raw);
        }
        let room_id = self.http.send(request).await?.room_id;
        let mut info = RoomInfo::new(room_id.clone(), Membership::Join);
        if options.encrypted {
            info.encryption = Some(RoomSettings::default());
        }
        self.update_rooms(|rooms| {
            rooms.entry(room_id.clone()).or_insert(info);
        })?;
        Ok(room_id)
    }

    /// Invites a user to a room.
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<(), ClientError> {
        let recipient =
            invite_user::v3::InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(user_id.to_owned()));
        self.http.send(invite_user::v3::Request::new(room_id.to_owned(), recipient)).await.map(|_| ())
    }

    /// Joins a room by ID or alias and returns its ID.
    pub async fn join(&self, room: &str) -> Result<OwnedRoomId, ClientError> {
        let target = OwnedRoomOrAliasId::try_from(room)
            .map_err(|_| ClientError::Config(format!("`{room}` is not a room ID or alias")))?;
        let room_id = self.http.send(join_room_by_id_or_alias::v3::Request::new(target)).await?.room_id;
        self.update_rooms(|rooms| {
            rooms
                .entry(room_id.clone())
                .or_insert_with(|| RoomInfo::new(room_id.clone(), Membership::Join))
                .membership = Membership::Join;
        })?;
        Ok(room_id)
    }

    /// Leaves a room (or declines an invite).
    pub async fn leave(&self, room_id: &RoomId) -> Result<(), ClientError> {
        self.http.send(leave_room::v3::Request::new(room_id.to_owned())).await?;
        self.update_rooms(|rooms| {
            if let Some(room) = rooms.get_mut(room_id) {
                room.membership = Membership::Leave;
            }
        })
    }

    /// The room ID an alias points to.
    pub async fn resolve_alias(&self, alias: &str) -> Result<OwnedRoomId, ClientError> {
        let alias = ruma::OwnedRoomAliasId::try_from(alias)
            .map_err(|_| ClientError::Config(format!("`{alias}` is not a room alias")))?;
        Ok(self.http.send(get_alias::v3::Request::new(alias)).await?.room_id)
    }

    /// The joined and invited members of a room, from the server.
    pub async fn members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>, ClientError> {
        let response = self.http.send(get_member_events::v3::Request::new(room_id.to_owned())).await?;
        let mut members = BTreeSet::new();
        for raw in response.chunk {
            let event: Value =
                serde_json::from_str(raw.json().get()).map_err(|e| ClientError::Response(e.to_string()))?;
            if matches!(event["content"]["membership"].as_str(), Some("join" | "invite"))
                && let Some(user) = event["state_key"].as_str().and_then(|u| UserId::parse(u).ok())
            {
                members.insert(user);
            }
        }
        Ok(members.into_iter().collect())
    }

    /// The rooms the client knows from its syncs.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).rooms.values().cloned().collect()
    }

    /// What the client knows about one room from its syncs.
    pub fn room(&self, room_id: &RoomId) -> Option<RoomInfo> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).rooms.get(room_id).cloned()
    }

    /// The room's encryption settings, if it is encrypted. Asks the server
    /// unless a sync already showed the room encrypted (encryption cannot
    /// be turned off).
    pub async fn room_encryption(&self, room_id: &RoomId) -> Result<Option<RoomSettings>, ClientError> {
        if let Some(settings) = self.room(room_id).and_then(|room| room.encryption) {
            return Ok(Some(settings));
        }
        let request = get_state_event_for_key::v3::Request::new(
            room_id.to_owned(),
            StateEventType::RoomEncryption,
            String::new(),
        );
        match self.http.send(request).await {
            Ok(response) => {
                let content: Value = serde_json::from_str(response.event_or_content.get())
                    .map_err(|e| ClientError::Response(e.to_string()))?;
                Ok(encryption_settings(&content))
            }
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ----- Messages -----

    /// Sends a text message; in an encrypted room it is encrypted first.
    pub async fn send_text(&self, room_id: &RoomId, text: &str) -> Result<OwnedEventId, ClientError> {
        self.send_message(room_id, "m.room.message", json!({ "msgtype": "m.text", "body": text })).await
    }

    /// Sends a message event. In an encrypted room the room key is shared
    /// first with every current device of the joined and invited members
    /// (querying their devices and claiming one-time keys as needed), and
    /// the event goes out as `m.room.encrypted`. The send uses a fresh
    /// transaction ID and is retried on transient failures, so it is never
    /// duplicated.
    pub async fn send_message(
        &self,
        room_id: &RoomId,
        event_type: &str,
        content: Value,
    ) -> Result<OwnedEventId, ClientError> {
        let (event_type, content) = match self.room_encryption(room_id).await? {
            None => (event_type.to_owned(), content),
            Some(settings) => {
                let members = self.members(room_id).await?;
                let mut guard = self.machine.lock().await;
                let machine = guard.as_mut().ok_or(ClientError::NotLoggedIn)?;
                machine.set_room_settings(room_id, settings);
                for _ in 0..REQUEST_ROUNDS {
                    let requests = machine.share_room_key(room_id, &members)?;
                    if requests.is_empty() {
                        break;
                    }
                    let mut collected = Collected::default();
                    let result = self.flush(machine, requests, &mut collected).await;
                    self.store.put_bytes(CRYPTO, &machine.pickle()?)?;
                    result?;
                    for refused in &collected.outcome.refused_devices {
                        tracing::warn!(user = %refused.user_id, device = %refused.device_id, reason = %refused.reason,
                            "device refused; it gets no room key");
                    }
                }
                let encrypted = machine.encrypt_room_event(room_id, event_type, &content, &members)?;
                self.store.put_bytes(CRYPTO, &machine.pickle()?)?;
                ("m.room.encrypted".to_owned(), encrypted)
            }
        };
        let raw = serde_json::value::to_raw_value(&content).map_err(|e| ClientError::Config(e.to_string()))?;
        let request = send_message_event::v3::Request::new_raw(
            room_id.to_owned(),
            TransactionId::new(),
            event_type.as_str().into(),
            Raw::from_json(raw),
        );
        Ok(self.http.send_with_retry(request).await?.event_id)
    }

    /// One page of a room's history, newest first, from `from` (a token
    /// from an earlier page) or from the present. Encrypted events are
    /// decrypted with the room keys this device holds.
    pub async fn messages(
        &self,
        room_id: &RoomId,
        from: Option<&str>,
        limit: u32,
    ) -> Result<MessagesPage, ClientError> {
        let mut request = get_message_events::v3::Request::new(room_id.to_owned(), Direction::Backward);
        request.from = from.map(str::to_owned);
        request.limit = UInt::from(limit);
        let response = self.http.send(request).await?;
        let mut guard = self.machine.lock().await;
        let machine = guard.as_mut().ok_or(ClientError::NotLoggedIn)?;
        let mut events = Vec::new();
        for raw in response.chunk {
            let event: Value =
                serde_json::from_str(raw.json().get()).map_err(|e| ClientError::Response(e.to_string()))?;
            if event.get("state_key").is_none() {
                events.extend(room_event(machine, room_id, &event));
            }
        }
        self.store.put_bytes(CRYPTO, &machine.pickle()?)?;
        Ok(MessagesPage { events, next: response.end })
    }

    // ----- Sync -----

    /// Syncs until it succeeds: transient failures (the server unreachable,
    /// overloaded or rate-limiting) are retried with a growing pause, up to
    /// 30 seconds. Long-polls for 30 seconds.
    pub async fn sync(&self) -> Result<SyncBatch, ClientError> {
        let mut backoff = SYNC_BACKOFF_FIRST;
        loop {
            match self.sync_once(Duration::from_secs(30)).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "sync failed; trying again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(SYNC_BACKOFF_MAX);
                }
                other => return other,
            }
        }
    }

    /// Syncs once, waiting up to `timeout` for something new. The batch is
    /// fully processed (keys handled, events decrypted) and the new sync
    /// token stored before it is returned.
    pub async fn sync_once(&self, timeout: Duration) -> Result<SyncBatch, ClientError> {
        let own_user = self.user_id()?;
        let mut request = sync_events::v3::Request::new();
        request.since = self.state.lock().unwrap_or_else(|e| e.into_inner()).sync_token.clone();
        request.timeout = Some(timeout);
        let response = self.http.send(request).await?;

        let mut batch = SyncBatch { next_batch: response.next_batch.clone(), ..SyncBatch::default() };
        let mut guard = self.machine.lock().await;
        let machine = guard.as_mut().ok_or(ClientError::NotLoggedIn)?;

        // Room state first: which rooms are encrypted and who is in them
        // decides whose devices are tracked.
        let mut timelines = Vec::new();
        let mut rooms = self.state.lock().unwrap_or_else(|e| e.into_inner()).rooms.clone();
        for (room_id, joined) in &response.rooms.join {
            let room = rooms.entry(room_id.clone()).or_insert_with(|| RoomInfo::new(room_id.clone(), Membership::Join));
            room.membership = Membership::Join;
            room.inviter = None;
            let mut effects = StateEffects::default();
            if let sync_events::v3::State::Before(state) = &joined.state {
                for raw in &state.events {
                    effects.merge(apply_state(room, &parse(raw.json().get())?));
                }
            }
            let mut events = Vec::new();
            for raw in &joined.timeline.events {
                let event = parse(raw.json().get())?;
                if event.get("state_key").is_some() {
                    effects.merge(apply_state(room, &event));
                } else {
                    events.push(event);
                }
            }
            if let Some(settings) = room.encryption {
                machine.set_room_settings(room_id, settings);
                if effects.members_changed {
                    machine.update_tracked_users(&room.members.iter().cloned().collect::<Vec<_>>());
                }
                if effects.member_left {
                    machine.discard_room_key(room_id);
                }
            }
            timelines.push((room_id.clone(), events));
        }
        for (room_id, invited) in &response.rooms.invite {
            let newly = rooms.get(room_id).is_none_or(|room| room.membership != Membership::Invite);
            let room =
                rooms.entry(room_id.clone()).or_insert_with(|| RoomInfo::new(room_id.clone(), Membership::Invite));
            room.membership = Membership::Invite;
            for raw in &invited.invite_state.events {
                let event = parse(raw.json().get())?;
                apply_state(room, &event);
                if event["type"] == "m.room.member" && event["state_key"] == own_user.as_str() {
                    room.inviter = event["sender"].as_str().and_then(|s| UserId::parse(s).ok());
                }
            }
            if newly {
                batch.invites.push(room.clone());
            }
        }
        for room_id in response.rooms.leave.keys() {
            if let Some(room) = rooms.get_mut(room_id) {
                room.membership = Membership::Leave;
            }
        }

        // Then the crypto part: to-device messages, device lists, key counts.
        let mut changes = SyncChanges::default();
        for raw in &response.to_device.events {
            changes.to_device_events.push(parse(raw.json().get())?);
        }
        changes.changed_users = response.device_lists.changed.clone();
        changes.left_users = response.device_lists.left.clone();
        if !response.device_one_time_keys_count.is_empty() {
            changes.one_time_key_counts = Some(
                response.device_one_time_keys_count.iter().map(|(alg, n)| (alg.to_string(), u64::from(*n))).collect(),
            );
        }
        changes.unused_fallback_key_types = response
            .device_unused_fallback_key_types
            .as_ref()
            .map(|types| types.iter().map(ToString::to_string).collect());
        let outcome = machine.receive_sync_changes(&changes);
        let mut collected = Collected { room_keys_arrived: !outcome.room_keys.is_empty(), ..Collected::default() };
        batch.to_device_failures.extend(outcome.failures);
        let result = self.run_outgoing(machine).await;
        if let Ok(more) = result.as_ref() {
            collected.room_keys_arrived |= more.room_keys_arrived;
            batch.refused_devices.extend(more.outcome.refused_devices.iter().cloned());
            batch.to_device_failures.extend(more.outcome.failures.iter().cloned());
        }

        // Then the timelines, decrypted.
        let mut undecrypted = std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).undecrypted);
        for (room_id, events) in timelines {
            for event in events {
                if let Some(room_event) = room_event(machine, &room_id, &event) {
                    if matches!(
                        room_event.encryption,
                        Encryption::Undecryptable(DecryptionError::UnknownSession { .. })
                    ) {
                        undecrypted.push((room_id.clone(), event));
                    }
                    batch.events.push(room_event);
                }
            }
        }
        if collected.room_keys_arrived {
            let earlier_this_batch: BTreeSet<String> = batch.events.iter().map(|e| e.event_id.clone()).collect();
            undecrypted.retain(|(room_id, event)| match room_event(machine, room_id, event) {
                Some(late) if !matches!(late.encryption, Encryption::Undecryptable(_)) => {
                    // Replace the undecryptable copy handed out in this batch,
                    // or add the event at the end.
                    if earlier_this_batch.contains(&late.event_id) {
                        if let Some(slot) = batch.events.iter_mut().find(|e| e.event_id == late.event_id) {
                            *slot = late;
                        }
                    } else {
                        batch.events.push(late);
                    }
                    false
                }
                _ => true,
            });
        }
        let excess = undecrypted.len().saturating_sub(MAX_UNDECRYPTED);
        undecrypted.drain(..excess);

        // Everything is processed: store it, then move the token on.
        self.store.put_bytes(CRYPTO, &machine.pickle()?)?;
        self.store.put(ROOMS, &rooms)?;
        result?;
        self.store.put(SYNC_TOKEN, &response.next_batch)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.rooms = rooms;
        state.undecrypted = undecrypted;
        state.sync_token = Some(response.next_batch);
        Ok(batch)
    }

    // ----- Internals -----

    /// Sends the requests the machine hands out until it has none left.
    async fn run_outgoing(&self, machine: &mut CryptoMachine) -> Result<Collected, ClientError> {
        let mut collected = Collected::default();
        for _ in 0..REQUEST_ROUNDS {
            let requests = machine.outgoing_requests()?;
            if requests.is_empty() {
                break;
            }
            self.flush(machine, requests, &mut collected).await?;
        }
        Ok(collected)
    }

    /// Sends crypto requests and hands the answers to the machine.
    async fn flush(
        &self,
        machine: &mut CryptoMachine,
        requests: Vec<OutgoingRequest>,
        collected: &mut Collected,
    ) -> Result<(), ClientError> {
        for request in requests {
            match self.http.raw(request.method(), &request.path(), Some(request.body())).await {
                Ok(answer) => collected.absorb(machine.mark_request_sent(&request.id, &answer)?),
                Err(e) => {
                    machine.mark_request_failed(&request.id)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn update_rooms(&self, change: impl FnOnce(&mut BTreeMap<OwnedRoomId, RoomInfo>)) -> Result<(), ClientError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state.rooms);
        self.store.put(ROOMS, &state.rooms)?;
        Ok(())
    }
}

/// What a state event changed in a room.
#[derive(Default)]
struct StateEffects {
    members_changed: bool,
    member_left: bool,
}

impl StateEffects {
    fn merge(&mut self, other: Self) {
        self.members_changed |= other.members_changed;
        self.member_left |= other.member_left;
    }
}

/// Applies a state event to what the client knows about a room.
fn apply_state(room: &mut RoomInfo, event: &Value) -> StateEffects {
    let mut effects = StateEffects::default();
    let content = &event["content"];
    match (event["type"].as_str(), event["state_key"].as_str()) {
        // Encryption cannot be turned off or changed once on.
        (Some("m.room.encryption"), Some("")) if room.encryption.is_none() => {
            room.encryption = encryption_settings(content);
            effects.members_changed = room.encryption.is_some();
        }
        (Some("m.room.name"), Some("")) => {
            room.name = content["name"].as_str().filter(|n| !n.is_empty()).map(str::to_owned);
        }
        (Some("m.room.canonical_alias"), Some("")) => {
            room.alias = content["alias"].as_str().map(str::to_owned);
        }
        (Some("m.room.member"), Some(user)) => {
            let Ok(user) = UserId::parse(user) else { return effects };
            if matches!(content["membership"].as_str(), Some("join" | "invite")) {
                effects.members_changed = room.members.insert(user);
            } else if room.members.remove(&user) {
                effects.member_left = true;
            }
        }
        _ => {}
    }
    effects
}

/// The settings of an `m.room.encryption` content, if it names Megolm.
fn encryption_settings(content: &Value) -> Option<RoomSettings> {
    (content["algorithm"] == MEGOLM_V1).then(|| RoomSettings {
        rotation_period_ms: content["rotation_period_ms"].as_u64().unwrap_or(DEFAULT_ROTATION_PERIOD_MS),
        rotation_period_msgs: content["rotation_period_msgs"].as_u64().unwrap_or(DEFAULT_ROTATION_PERIOD_MSGS),
    })
}

/// A timeline event for the caller, decrypted if it is encrypted. Events
/// without the basic fields are skipped.
fn room_event(machine: &mut CryptoMachine, room_id: &RoomId, event: &Value) -> Option<RoomEvent> {
    let event_id = event["event_id"].as_str()?.to_owned();
    let sender = UserId::parse(event["sender"].as_str()?).ok()?;
    let origin_server_ts = event["origin_server_ts"].as_u64().unwrap_or(0);
    let event_type = event["type"].as_str()?.to_owned();
    let base = |event_type: String, content: Value, encryption| RoomEvent {
        room_id: room_id.to_owned(),
        event_id: event_id.clone(),
        sender: sender.clone(),
        origin_server_ts,
        event_type,
        content,
        encryption,
    };
    if event_type != "m.room.encrypted" {
        return Some(base(event_type, event["content"].clone(), Encryption::None));
    }
    Some(match machine.decrypt_room_event(room_id, event) {
        Ok(decrypted) => base(
            decrypted.event_type,
            decrypted.content,
            Encryption::Decrypted { sender_device: decrypted.sender_device, session_id: decrypted.session_id },
        ),
        Err(reason) => base(event_type, event["content"].clone(), Encryption::Undecryptable(reason)),
    })
}

fn parse(json: &str) -> Result<Value, ClientError> {
    serde_json::from_str(json).map_err(|e| ClientError::Response(format!("malformed event: {e}")))
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let session = Session {
            homeserver: "https://example.org".into(),
            user_id: UserId::parse("@a:example.org").unwrap(),
            device_id: "DEV".into(),
            access_token: "secret-token".into(),
        };
        let registration = Registration {
            username: "a".into(),
            password: "secret-password".into(),
            registration_token: Some("secret-reg".into()),
            ..Registration::default()
        };
        let printed = format!("{session:?} {registration:?}");
        assert!(printed.contains("@a:example.org") && printed.contains("DEV"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
    }
}
