//! `/sync`: everything a client must see, read from the event stream.
//!
//! A sync token is `s<P>_t<T>`: `P` is the first stream position not yet
//! delivered (so `/messages` can page back from it), `T` the typing counter.
//! Positions are persisted, so tokens stay valid across restarts.
//! Long polling waits on the rooms service's position watch: no polling loop.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ruma::{
    OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions},
        sync::sync_events::v3 as sync,
    },
};

use super::{
    Services,
    rooms::{pdu::Pdu, state::StateMap},
};
use crate::{
    err,
    error::{Error, Result},
    storage::{Batch, StorageError, codec, trees},
    util::random_string,
};

/// A position in the server's streams: `s<events and other persisted data>_t<typing>`,
/// plus `_d<position>` when a device's to-device messages were only partly
/// delivered (the last position handed out). Also accepted where pagination
/// tokens are (`/messages` reads `pos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamToken {
    pub pos: u64,
    pub typing: u64,
    pub to_device: Option<u64>,
}

impl StreamToken {
    pub fn parse(token: &str) -> Result<Self> {
        let bad = || err!(InvalidParam, "Invalid token");
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = rest.split('_');
        let pos = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let mut out = Self { pos, typing: 0, to_device: None };
        for part in parts {
            match part.split_at_checked(1) {
                Some(("t", n)) => out.typing = n.parse().map_err(|_| bad())?,
                Some(("d", n)) => out.to_device = Some(n.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for StreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_t{}", self.pos, self.typing)?;
        if let Some(d) = self.to_device {
            write!(f, "_d{d}")?;
        }
        Ok(())
    }
}

pub struct SyncRequest {
    pub device_id: ruma::OwnedDeviceId,
    pub since: Option<StreamToken>,
    pub full_state: bool,
    pub timeout: Duration,
    pub filter: FilterDefinition,
    pub use_state_after: bool,
}

const DEFAULT_TIMELINE_LIMIT: usize = 10;

impl Services {
    /// Saves a filter and returns its ID.
    pub async fn save_filter(&self, user_id: &UserId, filter: &FilterDefinition) -> Result<String> {
        let id = random_string(10);
        let mut batch = Batch::new();
        batch.insert(
            trees::USERFILTERID_FILTER,
            codec::key(&[user_id.as_str().into(), id.as_str().into()]),
            serde_json::to_vec(filter).map_err(Error::internal)?,
        );
        self.db.commit(batch).await?;
        Ok(id)
    }

    pub fn load_filter(&self, user_id: &UserId, id: &str) -> Result<Option<FilterDefinition>> {
        let tree = self.db.tree(trees::USERFILTERID_FILTER)?;
        tree.get(&codec::key(&[user_id.as_str().into(), id.into()]))?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    StorageError::Corrupt { tree: trees::USERFILTERID_FILTER, reason: e.to_string() }.into()
                })
            })
            .transpose()
    }

    /// Answers a `/sync`, waiting up to the timeout for something to report.
    pub async fn sync(&self, user_id: &UserId, req: SyncRequest) -> Result<sync::Response> {
        let mut watch = self.rooms.subscribe();
        let mut typing = self.typing.subscribe();
        let deadline = tokio::time::Instant::now() + req.timeout;
        loop {
            let now =
                StreamToken { pos: *watch.borrow_and_update(), typing: *typing.borrow_and_update(), to_device: None };
            let response = self.sync_once(user_id, &req, now).await?;
            let empty = response.rooms.join.is_empty()
                && response.rooms.invite.is_empty()
                && response.rooms.leave.is_empty()
                && response.rooms.knock.is_empty()
                && response.account_data.events.is_empty()
                && response.to_device.events.is_empty()
                && response.device_lists.changed.is_empty()
                && response.device_lists.left.is_empty();
            if req.since.is_none() || req.full_state || !empty || req.since.is_some_and(|s| s.pos > now.pos + 1) {
                return Ok(response);
            }
            // Nothing new: sleep until a stream moves or the timeout passes.
            let moved = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    r = watch.changed() => r.is_ok(),
                    r = typing.changed() => r.is_ok(),
                }
            })
            .await;
            if !matches!(moved, Ok(true)) {
                return Ok(response);
            }
        }
    }

    async fn sync_once(&self, user_id: &UserId, req: &SyncRequest, now: StreamToken) -> Result<sync::Response> {
        let position = now.pos;
        // Tokens name the first undelivered position; deliver what lies after `since`.
        let since = req.since.map(|s| s.pos.saturating_sub(1).min(position));
        // A typing position from before a restart is meaningless: treat it as none.
        let since_typing = req.since.map(|s| if s.typing > now.typing { 0 } else { s.typing });
        // To-device messages: those the device acknowledged by syncing with `since` are deleted.
        let acked = req.since.map(|s| s.to_device.unwrap_or(s.pos.saturating_sub(1)));
        let delivery = self.to_device_for_sync(user_id, &req.device_id, acked, position).await?;
        let next = StreamToken { pos: position + 1, typing: now.typing, to_device: delivery.partial_upto };
        let mut response = sync::Response::new(next.to_string());
        response.to_device.events = delivery.events;
        response.device_one_time_keys_count = self.one_time_key_counts(user_id, &req.device_id)?;
        response.device_unused_fallback_key_types = Some(self.unused_fallback_key_types(user_id, &req.device_id)?);
        if let Some(since) = since {
            let lists = self.device_list_changes(user_id, since, position)?;
            response.device_lists.changed = lists.changed.into_iter().collect();
            response.device_lists.left = lists.left.into_iter().collect();
        }
        // Account data is read once and split into global and per-room parts.
        let mut room_data: std::collections::HashMap<String, Vec<(String, serde_json::Value)>> = Default::default();
        for (room, kind, content) in self.account_data_since(user_id, since, position)? {
            match room {
                None => response.account_data.events.push(account_data_event(&kind, content).cast_unchecked()),
                Some(r) => room_data.entry(r).or_default().push((kind, content)),
            }
        }
        let limit = req
            .filter
            .room
            .timeline
            .limit
            .map(|l| u64::from(l) as usize)
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .clamp(1, 500);
        let lazy = matches!(req.filter.room.state.lazy_load_options, LazyLoadOptions::Enabled { .. });

        for (room_id, record) in self.rooms.user_rooms(user_id)? {
            if record.stream > position {
                continue;
            }
            let changed_since = since.is_none_or(|s| record.stream > s);
            match record.membership.as_str() {
                "join" => {
                    let mut room = self.joined_room(user_id, &room_id, since, position, limit, lazy, req)?;
                    let mut extras = sync::JoinedRoom::new();
                    for (kind, content) in room_data.remove(room_id.as_str()).unwrap_or_default() {
                        extras.account_data.events.push(account_data_event(&kind, content).cast_unchecked());
                    }
                    if let Some(users) = self.typing.changed_since(&room_id, since_typing) {
                        let typing = serde_json::json!({ "type": "m.typing", "content": { "user_ids": users } });
                        extras
                            .ephemeral
                            .events
                            .push(ruma::serde::Raw::new(&typing).expect("serializes").cast_unchecked());
                    }
                    if let Some(content) = self.receipts_since(&room_id, user_id, since, position)? {
                        let receipt = serde_json::json!({ "type": "m.receipt", "content": content });
                        extras
                            .ephemeral
                            .events
                            .push(ruma::serde::Raw::new(&receipt).expect("serializes").cast_unchecked());
                    }
                    if room.is_none() && (!extras.account_data.events.is_empty() || !extras.ephemeral.events.is_empty())
                    {
                        room = Some(sync::JoinedRoom::new());
                    }
                    if let Some(mut room) = room {
                        room.account_data = extras.account_data;
                        room.ephemeral = extras.ephemeral;
                        let (notify, highlight) = self.unread_counts(&room_id, user_id, position).await?;
                        room.unread_notifications.notification_count = Some(UInt::try_from(notify).unwrap_or_default());
                        room.unread_notifications.highlight_count = Some(UInt::try_from(highlight).unwrap_or_default());
                        response.rooms.join.insert(room_id, room);
                    }
                }
                "knock" if changed_since => {
                    let mut knocked = sync::KnockedRoom::new();
                    knocked.knock_state.events = self.stripped_state(&room_id, user_id)?;
                    response.rooms.knock.insert(room_id, knocked);
                }
                "invite" if changed_since => {
                    let mut invited = sync::InvitedRoom::new();
                    invited.invite_state.events = self.stripped_state(&room_id, user_id)?;
                    response.rooms.invite.insert(room_id, invited);
                }
                "leave" | "ban"
                    if since.is_some() && changed_since || (since.is_none() && req.filter.room.include_leave) =>
                {
                    let mut left = sync::LeftRoom::new();
                    let events = self.rooms.timeline(
                        &room_id,
                        since.map_or(0, |s| s + 1),
                        record.stream + 1,
                        true,
                        limit + 1,
                    )?;
                    let (events, limited) = trim(events, limit);
                    left.timeline.limited = limited;
                    left.timeline.prev_batch = events.first().map(|(p, _)| format!("s{p}"));
                    for (_, pdu) in events {
                        if self.rooms.can_see(user_id, &pdu.event_id)? {
                            left.timeline.events.push(pdu.to_client_event(&room_id).cast_unchecked());
                        }
                    }
                    response.rooms.leave.insert(room_id, left);
                }
                _ => {}
            }
        }
        Ok(response)
    }

    #[allow(clippy::too_many_arguments)]
    fn joined_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        since: Option<u64>,
        position: u64,
        limit: usize,
        lazy: bool,
        req: &SyncRequest,
    ) -> Result<Option<sync::JoinedRoom>> {
        let membership = self.rooms.membership(user_id, room_id)?;
        let joined_since = since.is_some_and(|s| membership.as_ref().is_some_and(|m| m.stream > s));
        let from = since.map_or(0, |s| s + 1);
        let events = self.rooms.timeline(room_id, from, position + 1, true, limit + 1)?;
        if since.is_some() && events.is_empty() && !req.full_state {
            return Ok(None);
        }
        let (events, limited) = trim(events, limit);
        let mut room = sync::JoinedRoom::new();
        room.timeline.limited = limited;
        room.timeline.prev_batch = Some(format!("s{}", events.first().map_or(position + 1, |(p, _)| *p)));

        // State before the timeline (or after it, when the client asks for `state_after`).
        let current = self.rooms.current_state(room_id)?;
        let at_start: Arc<StateMap> = match events.first() {
            Some((_, first)) => match self.rooms.event_info(&first.event_id)?.and_then(|i| i.state_before) {
                Some(g) => self.rooms.state.load(g)?,
                None => Arc::new(StateMap::new()),
            },
            None => current.clone(),
        };
        let target = if req.use_state_after { current.clone() } else { at_start };
        let baseline: Option<Arc<StateMap>> = match since {
            Some(s) if !req.full_state && !joined_since => self.state_at(room_id, s)?,
            _ => None,
        };
        let mut senders: BTreeSet<OwnedUserId> = events.iter().map(|(_, p)| p.sender.clone()).collect();
        senders.insert(user_id.to_owned());
        let mut state_events = Vec::new();
        let in_timeline: BTreeSet<_> = events.iter().map(|(_, p)| p.event_id.clone()).collect();
        for ((kind, key), id) in target.iter() {
            // With lazy loading, the members of the timeline's senders are always sent:
            // the client may never have received them.
            let needed_member = lazy && kind == "m.room.member" && senders.iter().any(|s| s.as_str() == key);
            if !needed_member && baseline.as_ref().is_some_and(|b| b.get(&(kind.clone(), key.clone())) == Some(id)) {
                continue;
            }
            if !req.use_state_after && in_timeline.contains(id) {
                continue;
            }
            if lazy && kind == "m.room.member" && !senders.iter().any(|s| s.as_str() == key) {
                continue;
            }
            if let Some(pdu) = self.rooms.pdu(id)? {
                state_events.push(pdu.to_client_event(room_id).cast_unchecked());
            }
        }
        let mut state = sync::StateEvents::new();
        state.events = state_events;
        room.state = if req.use_state_after { sync::State::After(state) } else { sync::State::Before(state) };

        for (_, pdu) in events {
            if self.rooms.can_see(user_id, &pdu.event_id)? {
                room.timeline.events.push(pdu.to_client_event(room_id).cast_unchecked());
            }
        }

        // Summary: member counts and up to five heroes.
        let members = self.rooms.members(room_id)?;
        let count = |m: &str| UInt::try_from(members.iter().filter(|(_, x)| x == m).count() as u64).unwrap_or_default();
        room.summary.joined_member_count = Some(count("join"));
        room.summary.invited_member_count = Some(count("invite"));
        room.summary.heroes = members
            .iter()
            .filter(|(u, m)| u != user_id && (m == "join" || m == "invite"))
            .map(|(u, _)| u.clone())
            .take(5)
            .collect();
        Ok(Some(room))
    }

    /// The room's state after the last event at or before `position`.
    pub fn state_at(&self, room_id: &RoomId, position: u64) -> Result<Option<Arc<StateMap>>> {
        let last = self.rooms.timeline(room_id, 0, position + 1, true, 1)?;
        match last.first() {
            Some((_, pdu)) => match self.rooms.event_info(&pdu.event_id)? {
                Some(info) => Ok(Some(self.rooms.state.load(info.state_after)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The stripped state shown with an invite.
    fn stripped_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Vec<ruma::serde::Raw<ruma::events::AnyStrippedStateEvent>>> {
        let state = self.rooms.current_state(room_id)?;
        let mut out = Vec::new();
        let mut wanted: Vec<(String, String)> = [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ]
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
        wanted.push(("m.room.member".into(), user_id.to_string()));
        if let Some(invite) = self.rooms.state_pdu(&state, "m.room.member", user_id.as_str())? {
            wanted.push(("m.room.member".into(), invite.sender.to_string()));
        }
        for (kind, key) in wanted {
            if let Some(p) = self.rooms.state_pdu(&state, &kind, &key)? {
                out.push(stripped(&p));
            }
        }
        Ok(out)
    }
}

fn account_data_event(kind: &str, content: serde_json::Value) -> ruma::serde::Raw<serde_json::Value> {
    ruma::serde::Raw::new(&serde_json::json!({ "type": kind, "content": content })).expect("serializes")
}

fn stripped(p: &Pdu) -> ruma::serde::Raw<ruma::events::AnyStrippedStateEvent> {
    let value = serde_json::json!({
        "type": p.kind.to_string(),
        "state_key": p.state_key,
        "sender": p.sender,
        "content": p.content_json(),
    });
    ruma::serde::Raw::new(&value).expect("serializes").cast_unchecked()
}

/// Keeps the newest `limit` of events fetched newest-first, in chronological order.
fn trim(mut events: Vec<(u64, Pdu)>, limit: usize) -> (Vec<(u64, Pdu)>, bool) {
    let limited = events.len() > limit;
    events.truncate(limit);
    events.reverse();
    (events, limited)
}
