//! PDUs: building, hashing, signing and reading room events in their room
//! version's format. Version differences come from ruma's `RoomVersionRules`.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, RoomVersionId, UInt, UserId, events::TimelineEventType, room_version_rules::RoomVersionRules,
    serde::Raw,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

use crate::{err, error::Result};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A stored, accepted room event.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub json: CanonicalJsonObject,
    /// The `room_id` field as in the PDU (absent on create events of room versions 12+).
    pub room_id: Option<OwnedRoomId>,
    /// The room the event belongs to.
    pub room: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: UInt,
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

impl Pdu {
    /// Reads the fields of a PDU. `room_id` is supplied for room versions
    /// whose create event carries none.
    pub fn from_json(event_id: OwnedEventId, json: CanonicalJsonObject, room_id: &RoomId) -> Result<Self> {
        let value = serde_json::to_value(&json).map_err(crate::error::Error::internal)?;
        let f: Fields = serde_json::from_value(value).map_err(|e| err!(BadJson, "Malformed event: {e}"))?;
        // Since room version 11 `redacts` lives in the content.
        let redacts = f.redacts.or_else(|| {
            #[derive(Deserialize)]
            struct R {
                redacts: Option<OwnedEventId>,
            }
            serde_json::from_str::<R>(f.content.get()).ok().and_then(|r| r.redacts)
        });
        Ok(Self {
            event_id,
            json,
            room: f.room_id.clone().unwrap_or_else(|| room_id.to_owned()),
            room_id: f.room_id,
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            kind: f.kind,
            content: f.content,
            state_key: f.state_key,
            prev_events: f.prev_events,
            auth_events: f.auth_events,
            redacts,
            depth: f.depth,
        })
    }

    pub fn content_json(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The event in the client-server API's format (room events as clients see them).
    pub fn to_client_event(&self, room_id: &RoomId) -> Raw<ruma::events::AnyTimelineEvent> {
        let mut obj = serde_json::Map::new();
        obj.insert("event_id".into(), self.event_id.as_str().into());
        obj.insert("room_id".into(), room_id.as_str().into());
        obj.insert("sender".into(), self.sender.as_str().into());
        obj.insert("origin_server_ts".into(), serde_json::to_value(self.origin_server_ts).unwrap_or_default());
        obj.insert("type".into(), self.kind.to_string().into());
        obj.insert("content".into(), self.content_json());
        if let Some(k) = &self.state_key {
            obj.insert("state_key".into(), k.as_str().into());
        }
        if let Some(r) = &self.redacts {
            obj.insert("redacts".into(), r.as_str().into());
        }
        if let Some(unsigned) = self.json.get("unsigned") {
            obj.insert("unsigned".into(), serde_json::to_value(unsigned).unwrap_or_default());
        }
        Raw::new(&obj).expect("a JSON object serializes").cast_unchecked()
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// The rules of a room version this server supports.
pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    if !crate::service::rooms::SUPPORTED_VERSIONS.contains(version) {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported"),
        ));
    }
    version.rules().ok_or_else(|| crate::error::Error::internal("no rules for a supported version"))
}

/// Converts client-supplied JSON to canonical JSON, enforcing its limits
/// (integers within ±(2^53−1), no floats).
pub fn canonical_content(value: serde_json::Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(err!(BadJson, "Event content must be a JSON object")),
        Err(e) => Err(err!(BadJson, "Event content is not canonical JSON: {e}")),
    }
}

/// Fills in hashes and the server's signature, then derives the event ID
/// (and, for room versions whose room ID is the create event's hash, the room ID).
pub fn hash_sign_and_identify(
    object: &mut CanonicalJsonObject,
    server_name: &str,
    keypair: &ruma::signatures::Ed25519KeyPair,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId> {
    ruma::signatures::hash_and_sign_event(server_name, keypair, object, &rules.redaction)
        .map_err(|e| err!(TooLarge, "The event cannot be signed: {e}"))?;
    let size = serde_json::to_vec(&object).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_PDU_BYTES {
        return Err(err!(TooLarge, "The event is larger than {MAX_PDU_BYTES} bytes"));
    }
    let hash = ruma::signatures::reference_hash(object, rules)
        .map_err(|e| err!(TooLarge, "The event cannot be hashed: {e}"))?;
    EventId::parse(format!("${hash}")).map_err(crate::error::Error::internal)
}
