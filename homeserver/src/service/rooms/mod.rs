//! Rooms: the event pipeline (build → hash → sign → authorize → store) and
//! room state. Every event is a full PDU in its room version's format;
//! authorization runs the version's rules from ruma's state-res.

pub mod create;
pub mod pdu;
mod resolve;
pub mod state;
#[cfg(test)]
mod tests;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
    events::{StateEventType, TimelineEventType},
    state_res,
};
use serde::{Deserialize, Serialize};

use self::{
    pdu::Pdu,
    state::{StateMap, StateStore},
};
use super::{locks::UserLocks, server_keys};
use crate::{
    config::Config,
    err,
    error::{Error, Result},
    storage::{Batch, Db, StorageError, codec, trees},
    util::now_ms,
};

/// Room versions this server creates and joins.
pub const SUPPORTED_VERSIONS: &[RoomVersionId] = &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];
/// The version of new rooms unless the client asks for another (spec v1.19: 12).
pub const DEFAULT_VERSION: RoomVersionId = RoomVersionId::V12;

const STREAM_KEY: &[u8] = b"stream_position";
const GROUP_KEY: &[u8] = b"state_group_counter";

/// What the server knows about a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    /// The state group of the room's current state.
    pub state_group: u64,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    pub create_event_id: OwnedEventId,
}

/// Where an accepted event sits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventInfo {
    pub room_id: OwnedRoomId,
    pub stream: u64,
    /// State before the event (None for the create event).
    pub state_before: Option<u64>,
    /// State after the event.
    pub state_after: u64,
}

/// A user's membership record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipRecord {
    pub membership: String,
    pub stream: u64,
}

/// An event a local user wants to send.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: serde_json::Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    /// Key in `userdevicetxn_eventid` recorded atomically with the event.
    pub txn: Option<Vec<u8>>,
    /// The events to build on; `None` means the room's forward extremities.
    /// Naming others forks the DAG (as events arriving over federation do);
    /// the fork's states are then merged with state resolution.
    pub prev_events: Option<Vec<OwnedEventId>>,
}

/// The key of a client transaction.
pub fn txn_key(user_id: &UserId, device_id: &ruma::DeviceId, txn_id: &str) -> Vec<u8> {
    codec::key(&[user_id.as_str().into(), device_id.as_str().into(), txn_id.into()])
}

impl NewEvent {
    pub fn state(kind: impl Into<String>, state_key: impl Into<String>, content: serde_json::Value) -> Self {
        Self {
            kind: kind.into().into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
            txn: None,
            prev_events: None,
        }
    }

    pub fn message(kind: impl Into<String>, content: serde_json::Value) -> Self {
        Self { kind: kind.into().into(), content, state_key: None, redacts: None, txn: None, prev_events: None }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt { tree, reason: e.to_string() }.into())
}

pub struct Service {
    config: Arc<Config>,
    db: Db,
    keys: Arc<server_keys::Service>,
    pub state: StateStore,
    room_locks: UserLocks,
    /// Serialises stream-position assignment with the write, so positions become visible in order.
    append_lock: tokio::sync::Mutex<u64>,
    group_counter: AtomicU64,
    /// The highest stream position that is durable; readers never see past it.
    durable: tokio::sync::watch::Sender<u64>,
    /// Recently read events, parsed.
    pdu_cache: std::sync::Mutex<crate::util::BoundedCache<OwnedEventId, Arc<Pdu>>>,
}

impl Service {
    pub fn new(config: Arc<Config>, db: Db, keys: Arc<server_keys::Service>) -> Result<Self> {
        let global = db.tree(trees::GLOBAL)?;
        let read = |key: &[u8]| -> Result<u64> { Ok(global.get(key)?.and_then(|b| codec::u64_from(&b)).unwrap_or(0)) };
        let stream = read(STREAM_KEY)?;
        // Groups are numbered before their batch is applied, so batches of two
        // rooms can land out of order: trust the highest group on disk too.
        let highest_written = db
            .tree(trees::STATEGROUP_DELTA)?
            .range(&[], None, true)
            .next()
            .transpose()?
            .and_then(|(k, _)| codec::u64_from(&k))
            .unwrap_or(0);
        let groups = read(GROUP_KEY)?.max(highest_written);
        Ok(Self {
            config,
            state: StateStore::new(db.clone()),
            db,
            keys,
            room_locks: UserLocks::new(),
            append_lock: tokio::sync::Mutex::new(stream),
            group_counter: AtomicU64::new(groups),
            durable: tokio::sync::watch::channel(stream).0,
            pdu_cache: std::sync::Mutex::new(crate::util::BoundedCache::new(8_192)),
        })
    }

    /// The durable stream position, and a receiver to wait for it to move.
    pub fn stream_position(&self) -> u64 {
        *self.durable.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        let tree = self.db.tree(trees::ROOMID_ROOM)?;
        tree.get(room_id.as_bytes())?.map(|b| decode(trees::ROOMID_ROOM, &b)).transpose()
    }

    pub fn event_info(&self, event_id: &EventId) -> Result<Option<EventInfo>> {
        let tree = self.db.tree(trees::EVENTID_INFO)?;
        tree.get(event_id.as_bytes())?.map(|b| decode(trees::EVENTID_INFO, &b)).transpose()
    }

    /// An accepted event by ID.
    pub fn pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        Ok(self.pdu_arc(event_id)?.map(|p| (*p).clone()))
    }

    /// An accepted event by ID, shared with the event cache (no copy).
    pub fn pdu_arc(&self, event_id: &EventId) -> Result<Option<Arc<Pdu>>> {
        if let Some(hit) = self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner()).get(event_id) {
            return Ok(Some(hit));
        }
        let Some(pdu) = self.load_pdu(event_id)? else { return Ok(None) };
        let pdu = Arc::new(pdu);
        self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner()).put(event_id.to_owned(), pdu.clone());
        Ok(Some(pdu))
    }

    fn load_pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        let Some(info) = self.event_info(event_id)? else { return Ok(None) };
        let tree = self.db.tree(trees::EVENTID_PDU)?;
        let Some(bytes) = tree.get(event_id.as_bytes())? else { return Ok(None) };
        let json: CanonicalJsonObject = decode(trees::EVENTID_PDU, &bytes)?;
        Ok(Some(Pdu::from_json(event_id.to_owned(), json, &info.room_id)?))
    }

    /// The room's current state.
    pub fn current_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let room = self.room(room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
        self.state.load(room.state_group)
    }

    /// One state event of a state snapshot.
    pub fn state_pdu(&self, state: &StateMap, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        match state.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(id) => self.pdu(id),
            None => Ok(None),
        }
    }

    /// A user's membership in a room (`join`, `invite`, `leave`, `ban`, `knock`).
    pub fn membership(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<MembershipRecord>> {
        let tree = self.db.tree(trees::USERROOMID_MEMBERSHIP)?;
        tree.get(&codec::key(&[user_id.as_str().into(), room_id.as_str().into()]))?
            .map(|b| decode(trees::USERROOMID_MEMBERSHIP, &b))
            .transpose()
    }

    /// Every room the user has a membership in, with that membership.
    pub fn user_rooms(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
        let tree = self.db.tree(trees::USERROOMID_MEMBERSHIP)?;
        let prefix = codec::prefix(&[user_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let room = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|r| RoomId::parse(r).ok())
                .ok_or(StorageError::Corrupt { tree: trees::USERROOMID_MEMBERSHIP, reason: "bad key".into() })?;
            out.push((room, decode(trees::USERROOMID_MEMBERSHIP, &v)?));
        }
        Ok(out)
    }

    /// Members of a room with their membership.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, String)>> {
        let tree = self.db.tree(trees::ROOMUSERID_MEMBERSHIP)?;
        let prefix = codec::prefix(&[room_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let user = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|u| UserId::parse(u).ok())
                .ok_or(StorageError::Corrupt { tree: trees::ROOMUSERID_MEMBERSHIP, reason: "bad key".into() })?;
            out.push((user, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Timeline events of a room with stream positions in `[from, to)`,
    /// ascending or descending, at most `limit`, never past the durable position.
    pub fn timeline(
        &self,
        room_id: &RoomId,
        from: u64,
        to: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, Pdu)>> {
        let to = to.min(self.stream_position() + 1);
        if from >= to {
            return Ok(vec![]);
        }
        let tree = self.db.tree(trees::ROOMSTREAM_EVENTID)?;
        let start = codec::key(&[room_id.as_str().into(), from.into()]);
        let end = codec::key(&[room_id.as_str().into(), to.into()]);
        let mut out = Vec::new();
        for item in tree.range(&start, Some(&end), backwards).take(limit) {
            let (k, v) = item?;
            let stream = codec::trailing_u64(&k).unwrap_or(0);
            let id = EventId::parse(String::from_utf8_lossy(&v).as_ref()).map_err(Error::internal)?;
            if let Some(pdu) = self.pdu(&id)? {
                out.push((stream, pdu));
            }
        }
        Ok(out)
    }

    /// Applies `batch` plus what `fill` adds for the next stream position,
    /// in position order, then waits until it is durable and wakes syncs.
    /// `guard` (a room lock) is released once the write is applied.
    pub async fn commit_at_next_position<G>(
        &self,
        mut batch: Batch,
        guard: Option<G>,
        fill: impl FnOnce(u64, &mut Batch),
    ) -> Result<u64> {
        let stream = {
            let mut position = self.append_lock.lock().await;
            let stream = *position + 1;
            fill(stream, &mut batch);
            batch.insert(trees::GLOBAL, STREAM_KEY.to_vec(), codec::u64_bytes(stream).to_vec());
            self.db.apply(batch)?;
            *position = stream;
            stream
        };
        drop(guard);
        self.db.durable().await?;
        self.durable.send_if_modified(|d| {
            if stream > *d {
                *d = stream;
                true
            } else {
                false
            }
        });
        Ok(stream)
    }

    /// The event a client transaction already produced, if any.
    pub fn txn_event(&self, key: &[u8]) -> Result<Option<OwnedEventId>> {
        let tree = self.db.tree(trees::USERDEVICETXN_EVENTID)?;
        Ok(tree.get(key)?.and_then(|v| EventId::parse(String::from_utf8_lossy(&v).as_ref()).ok()))
    }

    /// A user's membership in a state snapshot.
    pub fn membership_in(&self, state: &StateMap, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .state_pdu(state, "m.room.member", user_id.as_str())?
            .and_then(|p| p.content_json().get("membership").and_then(|m| m.as_str()).map(str::to_owned)))
    }

    /// Whether `user_id` may see an event, by the room's history visibility
    /// at the event and the user's membership then and now.
    pub fn can_see(&self, user_id: &UserId, event_id: &EventId) -> Result<bool> {
        let Some(info) = self.event_info(event_id)? else { return Ok(false) };
        let after = self.state.load(info.state_after)?;
        let before = match info.state_before {
            Some(g) => self.state.load(g)?,
            None => after.clone(),
        };
        let visibility = self
            .state_pdu(&before, "m.room.history_visibility", "")?
            .and_then(|p| p.content_json().get("history_visibility").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if visibility == "world_readable" {
            return Ok(true);
        }
        let then = self.membership_in(&after, user_id)?;
        let now = self.membership(user_id, &info.room_id)?.map(|m| m.membership);
        let visible = match visibility.as_str() {
            "invited" => matches!(then.as_deref(), Some("join" | "invite")),
            "joined" => then.as_deref() == Some("join"),
            // shared (and anything unknown, read as shared)
            _ => then.as_deref() == Some("join") || now.as_deref() == Some("join"),
        };
        if visible {
            return Ok(true);
        }
        // Users always see their own membership events (their leave, kick or
        // ban included), or clients never learn why a room went away.
        Ok(self
            .pdu_arc(event_id)?
            .is_some_and(|p| p.kind.to_string() == "m.room.member" && p.state_key.as_deref() == Some(user_id.as_str())))
    }

    /// The state a user may read: the current state while joined, else the
    /// state when they left (or were kicked or banned).
    pub fn readable_state(&self, user_id: &UserId, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let room = self.room(room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
        let current = self.state.load(room.state_group)?;
        match self.membership(user_id, room_id)?.map(|m| m.membership).as_deref() {
            Some("join") => Ok(current),
            Some("leave" | "ban") => {
                let leave = current.get(&("m.room.member".to_owned(), user_id.to_string()));
                let info = match leave {
                    Some(id) => self.event_info(id)?,
                    None => None,
                };
                match info {
                    // The state as the membership ended, including the leave itself.
                    Some(i) => Ok(self.state.load(i.state_after)?),
                    None => Err(err!(Forbidden, "You are not in this room")),
                }
            }
            _ => {
                let world = self.state_pdu(&current, "m.room.history_visibility", "")?.is_some_and(|p| {
                    p.content_json().get("history_visibility").and_then(|v| v.as_str()) == Some("world_readable")
                });
                if world { Ok(current) } else { Err(err!(Forbidden, "You are not in this room")) }
            }
        }
    }

    /// Builds, signs, authorizes and stores one event from a local user.
    /// `room_id` is `None` only for the create event of a room whose ID is
    /// derived from it. Durable when this returns.
    pub async fn append(
        &self,
        room_id: Option<&RoomId>,
        version: &RoomVersionId,
        sender: &UserId,
        new: NewEvent,
    ) -> Result<Pdu> {
        let rules = pdu::rules_for(version)?;
        let is_create = new.kind == TimelineEventType::RoomCreate;
        let lock_key = room_id.map(|r| r.to_string()).unwrap_or_default();
        let room_guard = self.room_locks.lock(&lock_key).await;

        let room = match room_id {
            Some(r) => self.room(r)?,
            None => None,
        };
        if room.is_none() != is_create {
            return Err(if is_create {
                err!(RoomInUse, "The room already exists")
            } else {
                err!(NotFound, "Unknown room")
            });
        }
        // What the event builds on: the extremities (whose resolved state is the
        // room's current state) or explicitly named events.
        let mut pre_batch = Batch::new();
        let (prev, state_group_before, depth) = match (&room, &new.prev_events) {
            (None, _) => (Vec::new(), None, 1),
            (Some(r), None) => (r.extremities.clone(), Some(r.state_group), r.depth + 1),
            (Some(_), Some(prev)) => {
                let mut groups = Vec::new();
                let mut depth = 0;
                for id in prev {
                    let info = self.event_info(id)?.ok_or_else(|| err!(NotFound, "Unknown prev event {id}"))?;
                    groups.push(info.state_after);
                    depth = depth.max(self.pdu(id)?.map_or(0, |p| u64::from(p.depth)));
                }
                (prev.clone(), Some(self.resolved_group(version, &groups, &mut pre_batch)?), depth + 1)
            }
        };
        let state_before = match state_group_before {
            Some(g) => Some(self.state.load(g)?),
            None => None,
        };

        // Assemble the PDU.
        let content_obj = pdu::canonical_content(new.content)?;
        let content_raw = serde_json::value::to_raw_value(&content_obj).map_err(Error::internal)?;
        let auth_types = state_res::auth_types_for_event(
            &new.kind,
            sender,
            new.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| err!(BadJson, "Invalid event content: {e}"))?;
        let mut auth_events = Vec::new();
        if let Some(state) = &state_before {
            for (kind, key) in &auth_types {
                if *kind == StateEventType::RoomCreate && rules.authorization.room_create_event_id_as_room_id {
                    continue;
                }
                if let Some(id) = state.get(&(kind.to_string(), key.clone()))
                    && !auth_events.contains(id)
                {
                    auth_events.push(id.clone());
                }
            }
        }
        let mut object = CanonicalJsonObject::new();
        let text = |s: &str| CanonicalJsonValue::String(s.to_owned());
        let ids = |v: &[OwnedEventId]| CanonicalJsonValue::Array(v.iter().map(|i| text(i.as_str())).collect());
        object.insert("auth_events".into(), ids(&auth_events));
        object.insert("content".into(), CanonicalJsonValue::Object(content_obj));
        object.insert("depth".into(), CanonicalJsonValue::Integer(ruma::Int::from(depth as u32)));
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).map_err(Error::internal)?),
        );
        object.insert("prev_events".into(), ids(&prev));
        if let Some(r) = room_id {
            object.insert("room_id".into(), text(r.as_str()));
        }
        object.insert("sender".into(), text(sender.as_str()));
        object.insert("type".into(), text(&new.kind.to_string()));
        if let Some(k) = &new.state_key {
            object.insert("state_key".into(), text(k));
        }
        if let Some(r) = &new.redacts {
            if rules.redaction.content_field_redacts {
                if let Some(CanonicalJsonValue::Object(c)) = object.get_mut("content") {
                    c.insert("redacts".into(), text(r.as_str()));
                }
            } else {
                object.insert("redacts".into(), text(r.as_str()));
            }
        }
        if serde_json::to_vec(&object).map(|v| v.len()).unwrap_or(usize::MAX) > pdu::MAX_PDU_BYTES {
            return Err(err!(TooLarge, "The event is larger than {} bytes", pdu::MAX_PDU_BYTES));
        }
        state_res::check_pdu_format(&object, &rules.event_format).map_err(|e| err!(BadJson, "Invalid event: {e}"))?;
        let event_id = pdu::hash_sign_and_identify(&mut object, &self.config.server_name, self.keys.keypair(), &rules)?;
        let room_id: OwnedRoomId = match room_id {
            Some(r) => r.to_owned(),
            None => RoomId::new_v2(event_id.as_str().trim_start_matches('$')).map_err(Error::internal)?,
        };
        let event = Pdu::from_json(event_id.clone(), object.clone(), &room_id)?;

        // Authorize against the auth events and the current state.
        let this_event = Arc::new(event.clone());
        let fetch_event = |id: &EventId| -> Option<Arc<Pdu>> {
            if *id == *event_id { Some(this_event.clone()) } else { self.pdu_arc(id).ok().flatten() }
        };
        state_res::check_state_independent_auth_rules(&rules.authorization, &event, fetch_event)
            .map_err(|e| err!(Forbidden, "Event is not allowed: {e}"))?;
        if let Some(state) = &state_before {
            let fetch_state = |kind: &StateEventType, key: &str| -> Option<Arc<Pdu>> {
                state.get(&(kind.to_string(), key.to_owned())).and_then(|id| self.pdu_arc(id).ok().flatten())
            };
            state_res::check_state_dependent_auth_rules(&rules.authorization, &event, fetch_state)
                .map_err(|e| err!(Forbidden, "Event is not allowed: {e}"))?;
        }

        // Store: the event, its place in the timeline, the new state and the room record.
        let mut batch = pre_batch;
        // A redaction replaces its target by the redacted form in the same write.
        let mut redacted_target = None;
        if event.kind == TimelineEventType::RoomRedaction
            && let Some(target) =
                event.redacts.as_ref().and_then(|t| self.pdu(t).ok().flatten()).filter(|t| t.room == room_id)
        {
            if !self.may_redact(&room_id, sender, &target)? {
                return Err(err!(Forbidden, "You may not redact this event"));
            }
            let redacted = self.redacted_json(&target, &event, &rules)?;
            // Readers must not get the cached original once the redaction is written.
            self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner()).remove(target.event_id.as_ref() as &EventId);
            redacted_target = Some(target.event_id.clone());
            batch.insert(
                trees::EVENTID_PDU,
                target.event_id.as_bytes().to_vec(),
                serde_json::to_vec(&redacted).expect("serializes"),
            );
        }
        let state_after = if let Some(key) = &new.state_key {
            let group = self.group_counter.fetch_add(1, Ordering::SeqCst) + 1;
            self.state.write_group(
                group,
                state_group_before,
                &[(new.kind.to_string(), key.clone(), event_id.clone())],
                &mut batch,
            )?;
            batch.insert(trees::GLOBAL, GROUP_KEY.to_vec(), codec::u64_bytes(group).to_vec());
            group
        } else {
            state_group_before.ok_or_else(|| Error::internal("a room without state"))?
        };
        // The new forward extremities; with more than one, the room's state is their resolution.
        let mut extremities: Vec<OwnedEventId> = room
            .as_ref()
            .map(|r| r.extremities.iter().filter(|e| !prev.contains(e)).cloned().collect())
            .unwrap_or_default();
        extremities.push(event_id.clone());
        let current_group = if extremities.len() == 1 {
            state_after
        } else {
            let mut groups = vec![state_after];
            for id in &extremities[..extremities.len() - 1] {
                groups.push(self.event_info(id)?.ok_or_else(|| Error::internal("extremity without info"))?.state_after);
            }
            self.resolved_group(version, &groups, &mut batch)?
        };
        let record = RoomRecord {
            version: version.clone(),
            state_group: current_group,
            extremities,
            depth: depth.max(room.as_ref().map_or(0, |r| r.depth)),
            create_event_id: room.as_ref().map_or_else(|| event_id.clone(), |r| r.create_event_id.clone()),
        };
        batch.insert(trees::ROOMID_ROOM, room_id.as_bytes().to_vec(), serde_json::to_vec(&record).expect("serializes"));
        batch.insert(
            trees::EVENTID_PDU,
            event_id.as_bytes().to_vec(),
            serde_json::to_vec(&object).expect("serializes"),
        );
        if let Some(key) = &new.txn {
            batch.insert(trees::USERDEVICETXN_EVENTID, key.clone(), event_id.as_bytes().to_vec());
        }
        let membership = (new.kind == TimelineEventType::RoomMember)
            .then(|| {
                let user = new.state_key.as_deref().and_then(|k| UserId::parse(k).ok())?;
                let m = event.content_json().get("membership")?.as_str()?.to_owned();
                Some((user, m))
            })
            .flatten();

        let room_for_info = room_id.clone();
        let id_for_info = event_id.clone();
        self.commit_at_next_position(batch, Some(room_guard), move |stream, batch| {
            let info =
                EventInfo { room_id: room_for_info.clone(), stream, state_before: state_group_before, state_after };
            batch.insert(
                trees::EVENTID_INFO,
                id_for_info.as_bytes().to_vec(),
                serde_json::to_vec(&info).expect("serializes"),
            );
            batch.insert(
                trees::ROOMSTREAM_EVENTID,
                codec::key(&[room_for_info.as_str().into(), stream.into()]),
                id_for_info.as_bytes().to_vec(),
            );
            if let Some((user, m)) = &membership {
                let rec = MembershipRecord { membership: m.clone(), stream };
                batch.insert(
                    trees::USERROOMID_MEMBERSHIP,
                    codec::key(&[user.as_str().into(), room_for_info.as_str().into()]),
                    serde_json::to_vec(&rec).expect("serializes"),
                );
                batch.insert(
                    trees::ROOMUSERID_MEMBERSHIP,
                    codec::key(&[room_for_info.as_str().into(), user.as_str().into()]),
                    m.as_bytes().to_vec(),
                );
            }
        })
        .await?;
        if let Some(target) = redacted_target {
            // Also drop anything cached between the first removal and the write.
            self.pdu_cache.lock().unwrap_or_else(|e| e.into_inner()).remove(target.as_ref() as &EventId);
        }
        Ok(event)
    }
}

impl Service {
    /// Whether `sender` may redact `target` in the room: their own event, or
    /// with at least the room's `redact` power level.
    /// The room's creators: the create event's sender and its `additional_creators`.
    fn creators(&self, room: &RoomRecord) -> Result<Vec<OwnedUserId>> {
        let mut creators = vec![];
        if let Some(c) = self.pdu(&room.create_event_id)? {
            creators.push(c.sender.clone());
            if let Some(extra) = c.content_json().get("additional_creators").and_then(|v| v.as_array()) {
                creators.extend(extra.iter().filter_map(|v| v.as_str().and_then(|u| UserId::parse(u).ok())));
            }
        }
        Ok(creators)
    }

    /// The power levels push rules need (`sender_notification_permission`,
    /// the `@room` rule), from the room's current state.
    pub fn push_power_levels(&self, room_id: &RoomId) -> Result<Option<ruma::push::PushConditionPowerLevelsCtx>> {
        let Some(room) = self.room(room_id)? else { return Ok(None) };
        let rules = pdu::rules_for(&room.version)?;
        let state = self.state.load(room.state_group)?;
        let power = self.state_pdu(&state, "m.room.power_levels", "")?.map(|p| p.content_json()).unwrap_or_default();
        let int = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_i64()).and_then(ruma::Int::new);
        let users = power
            .get("users")
            .and_then(|m| m.as_object())
            .map(|m| m.iter().filter_map(|(u, v)| Some((UserId::parse(u).ok()?, int(Some(v))?))).collect())
            .unwrap_or_default();
        let users_default = int(power.get("users_default")).unwrap_or_default();
        let mut notifications = ruma::power_levels::NotificationPowerLevels::new();
        if let Some(level) = int(power.get("notifications").and_then(|n| n.get("room"))) {
            notifications.room = level;
        }
        let power_rules =
            ruma::room_version_rules::RoomPowerLevelsRules::new(&rules.authorization, self.creators(&room)?);
        Ok(Some(ruma::push::PushConditionPowerLevelsCtx::new(users, users_default, notifications, power_rules)))
    }

    pub fn may_redact(&self, room_id: &RoomId, sender: &UserId, target: &Pdu) -> Result<bool> {
        if target.sender == sender {
            return Ok(true);
        }
        let room = self.room(room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
        let rules = pdu::rules_for(&room.version)?;
        let state = self.state.load(room.state_group)?;
        let power = self.state_pdu(&state, "m.room.power_levels", "")?.map(|p| p.content_json()).unwrap_or_default();
        let level = |u: &UserId| -> i64 {
            power
                .get("users")
                .and_then(|m| m.get(u.as_str()))
                .and_then(|v| v.as_i64())
                .unwrap_or_else(|| power.get("users_default").and_then(|v| v.as_i64()).unwrap_or(0))
        };
        // Room creators of versions that privilege them outrank every power level.
        if rules.authorization.explicitly_privilege_room_creators && self.creators(&room)?.iter().any(|c| c == sender) {
            return Ok(true);
        }
        let needed = power.get("redact").and_then(|v| v.as_i64()).unwrap_or(50);
        Ok(level(sender) >= needed)
    }

    /// The redacted form of `target` (the room version's redaction algorithm),
    /// carrying the redaction in `unsigned.redacted_because`.
    fn redacted_json(
        &self,
        target: &Pdu,
        redaction: &Pdu,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<CanonicalJsonObject> {
        let mut redacted = ruma::canonical_json::redact(target.json.clone(), &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        let because = serde_json::to_value(redaction.to_client_event(&target.room)).map_err(Error::internal)?;
        let because = CanonicalJsonValue::try_from(because).map_err(Error::internal)?;
        let mut unsigned = CanonicalJsonObject::new();
        unsigned.insert("redacted_because".into(), because);
        redacted.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
        Ok(redacted)
    }

    /// The event closest to `ts` in the given direction.
    pub fn event_by_timestamp(&self, room_id: &RoomId, ts: u64, forwards: bool) -> Result<Option<Pdu>> {
        let position = self.stream_position() + 1;
        let events = self.timeline(room_id, 0, position, !forwards, usize::MAX)?;
        Ok(events.into_iter().map(|(_, p)| p).find(|p| {
            let t = u64::from(p.origin_server_ts.0);
            if forwards { t >= ts } else { t <= ts }
        }))
    }

    /// Removes a room the user has left from their room list.
    pub async fn forget(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::new();
        batch.remove(trees::USERROOMID_MEMBERSHIP, codec::key(&[user_id.as_str().into(), room_id.as_str().into()]));
        self.db.commit(batch).await?;
        Ok(())
    }
}
