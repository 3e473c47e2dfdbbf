//! Push rules: the spec's server-default rule set merged with the user's
//! changes (stored as the `m.push_rules` account data), and their
//! evaluation to count notifications and highlights for `/sync`.

use ruma::{
    RoomId, UInt, UserId,
    push::{Action, PushConditionRoomCtx, Ruleset},
};
use serde_json::json;

use super::Services;
use crate::{
    error::{Error, Result},
    storage::{codec, trees},
};

/// Remembered unread counts of one user in one room.
#[derive(Debug, Clone, Copy)]
pub struct UnreadMemo {
    read: u64,
    upto: u64,
    notify: u64,
    highlight: u64,
}

impl Services {
    /// The user's rule set: their stored one, or the server defaults.
    pub fn push_rules(&self, user_id: &UserId) -> Result<Ruleset> {
        match self.account_data(user_id, None, "m.push_rules")? {
            Some(stored) => serde_json::from_value(stored.content["global"].clone()).map_err(Error::internal),
            None => Ok(Ruleset::server_default(user_id)),
        }
    }

    pub async fn set_push_rules(&self, user_id: &UserId, rules: &Ruleset) -> Result<()> {
        let content = json!({ "global": rules });
        self.set_account_data(user_id, None, "m.push_rules", content).await?;
        // Counts made under the old rules are stale.
        self.unread_memo.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, u), _| u != user_id);
        Ok(())
    }

    /// The stream position of the user's latest read receipt in a room (0 if none).
    pub fn read_position(&self, room_id: &RoomId, user_id: &UserId) -> Result<u64> {
        let tree = self.db.tree(trees::ROOMRECEIPT_DATA)?;
        let mut best = 0;
        for kind in ["m.read", "m.read.private"] {
            for thread in ["", "main"] {
                let key = codec::key(&[room_id.as_str().into(), kind.into(), user_id.as_str().into(), thread.into()]);
                let Some(bytes) = tree.get(&key)? else { continue };
                let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(Error::internal)?;
                let Some(id) = value["event_id"].as_str().and_then(|e| ruma::EventId::parse(e).ok()) else { continue };
                if let Some(info) = self.rooms.event_info(&id)? {
                    best = best.max(info.stream);
                }
            }
        }
        Ok(best)
    }

    /// `(notification_count, highlight_count)` for events after the user's read receipt.
    ///
    /// Counts are remembered per room and user, so a later call only
    /// evaluates the events that arrived since (until the receipt moves).
    pub async fn unread_counts(&self, room_id: &RoomId, user_id: &UserId, upto: u64) -> Result<(u64, u64)> {
        // Nothing before the user's join counts.
        let joined =
            self.rooms.membership(user_id, room_id)?.filter(|m| m.membership == "join").map_or(0, |m| m.stream);
        let read = self.read_position(room_id, user_id)?.max(joined);
        let key = (room_id.to_owned(), user_id.to_owned());
        let memo = self.unread_memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let (from, base) = match memo {
            Some(m) if m.read == read && m.upto <= upto => (m.upto + 1, (m.notify, m.highlight)),
            _ => (read + 1, (0, 0)),
        };
        let (notify, highlight) = self.count_notifying(room_id, user_id, from, upto).await?;
        let counts = (base.0 + notify, base.1 + highlight);
        let memo = UnreadMemo { read, upto, notify: counts.0, highlight: counts.1 };
        let mut cache = self.unread_memo.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key, memo);
        Ok(counts)
    }

    async fn count_notifying(&self, room_id: &RoomId, user_id: &UserId, from: u64, upto: u64) -> Result<(u64, u64)> {
        const MAX_COUNTED: usize = 500;
        let events = self.rooms.timeline(room_id, from, upto + 1, true, MAX_COUNTED)?;
        if events.is_empty() {
            return Ok((0, 0));
        }
        let rules = self.push_rules(user_id)?;
        let members = self.rooms.members(room_id)?;
        let joined = members.iter().filter(|(_, m)| m == "join").count() as u64;
        let profile = self.users.profile(user_id)?.unwrap_or_default();
        let mut ctx = PushConditionRoomCtx::new(
            room_id.to_owned(),
            UInt::try_from(joined).unwrap_or_default(),
            user_id.to_owned(),
            profile.displayname.unwrap_or_else(|| user_id.localpart().to_owned()),
        );
        ctx.power_levels = self.rooms.push_power_levels(room_id)?;
        let (mut notify, mut highlight) = (0, 0);
        for (_, pdu) in events {
            if pdu.sender == user_id || !self.rooms.can_see(user_id, &pdu.event_id)? {
                continue;
            }
            let raw = pdu.to_client_event(room_id);
            let actions = rules.get_actions(&raw, &ctx).await;
            if actions.iter().any(|a| matches!(a, Action::Notify)) {
                notify += 1;
                if actions.iter().any(Action::is_highlight) {
                    highlight += 1;
                }
            }
        }
        Ok((notify, highlight))
    }
}
