//! Room aliases and the published room list.

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Services;
use crate::{
    err,
    error::{Error, ErrorKind, Result},
    storage::{Batch, StorageError, codec, trees},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

impl Services {
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        let tree = self.db.tree(trees::ALIAS_ROOMID)?;
        tree.get(alias.as_bytes())?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| StorageError::Corrupt { tree: trees::ALIAS_ROOMID, reason: e.to_string() }.into())
            })
            .transpose()
    }

    /// Creates a local alias; `M_ROOM_IN_USE`-style 409 if it exists.
    pub async fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        if alias.server_name() != self.config.server_name.as_str() {
            return Err(err!(InvalidParam, "Aliases must be on this server ({})", self.config.server_name));
        }
        let _guard = self.locks.lock(format!("alias:{alias}")).await;
        if self.resolve_alias(alias)?.is_some() {
            return Err(Error::with_status(ErrorKind::Unknown, http::StatusCode::CONFLICT, "The alias already exists"));
        }
        let mut batch = Batch::new();
        let record = AliasRecord { room_id: room_id.to_owned(), creator: creator.to_owned() };
        batch.insert(trees::ALIAS_ROOMID, alias.as_bytes().to_vec(), serde_json::to_vec(&record).expect("serializes"));
        batch.insert(trees::ROOMALIAS_EMPTY, codec::key(&[room_id.as_str().into(), alias.as_str().into()]), Vec::new());
        self.db.commit(batch).await?;
        Ok(())
    }

    pub async fn delete_alias(&self, alias: &RoomAliasId) -> Result<()> {
        let record = self.resolve_alias(alias)?.ok_or_else(|| err!(NotFound, "No such alias"))?;
        let mut batch = Batch::new();
        batch.remove(trees::ALIAS_ROOMID, alias.as_bytes().to_vec());
        batch.remove(trees::ROOMALIAS_EMPTY, codec::key(&[record.room_id.as_str().into(), alias.as_str().into()]));
        self.db.commit(batch).await?;
        Ok(())
    }

    pub fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let tree = self.db.tree(trees::ROOMALIAS_EMPTY)?;
        let prefix = codec::prefix(&[room_id.as_str().into()]);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            if let Ok(a) = RoomAliasId::parse(String::from_utf8_lossy(&k[prefix.len()..]).as_ref()) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// A user's power level in a room (creators of version 12 rooms: unlimited).
    pub fn power_level(&self, room_id: &RoomId, user_id: &UserId) -> Result<i64> {
        let room = self.rooms.room(room_id)?.ok_or_else(|| err!(NotFound, "Unknown room"))?;
        let rules = crate::service::rooms::pdu::rules_for(&room.version)?;
        if rules.authorization.explicitly_privilege_room_creators
            && let Some(create) = self.rooms.pdu(&room.create_event_id)?
        {
            let extra = create.content_json().get("additional_creators").cloned().unwrap_or(json!([]));
            if create.sender == user_id || extra.as_array().is_some_and(|a| a.iter().any(|u| u == user_id.as_str())) {
                return Ok(i64::MAX);
            }
        }
        let state = self.rooms.state.load(room.state_group)?;
        let power = self.rooms.state_pdu(&state, "m.room.power_levels", "")?.map(|p| p.content_json());
        let Some(power) = power else {
            // Without power levels the creator has 100, everyone else 0.
            let creator = self.rooms.pdu(&room.create_event_id)?.map(|c| c.sender);
            return Ok(if creator.as_deref() == Some(user_id) { 100 } else { 0 });
        };
        Ok(power
            .get("users")
            .and_then(|u| u.get(user_id.as_str()))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| power.get("users_default").and_then(Value::as_i64).unwrap_or(0)))
    }

    /// The level needed to send a state event of `kind` in a room.
    pub fn state_level(&self, room_id: &RoomId, kind: &str) -> Result<i64> {
        let state = self.rooms.current_state(room_id)?;
        let power =
            self.rooms.state_pdu(&state, "m.room.power_levels", "")?.map(|p| p.content_json()).unwrap_or_default();
        Ok(power
            .get("events")
            .and_then(|e| e.get(kind))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| power.get("state_default").and_then(Value::as_i64).unwrap_or(50)))
    }

    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.db.tree(trees::ROOMID_PUBLISHED)?.get(room_id.as_bytes())?.is_some())
    }

    pub async fn set_published(&self, room_id: &RoomId, published: bool) -> Result<()> {
        let mut batch = Batch::new();
        if published {
            batch.insert(trees::ROOMID_PUBLISHED, room_id.as_bytes().to_vec(), Vec::new());
        } else {
            batch.remove(trees::ROOMID_PUBLISHED, room_id.as_bytes().to_vec());
        }
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Published rooms as public-room chunks (JSON), most members first.
    pub fn public_rooms(&self, search: Option<&str>) -> Result<Vec<Value>> {
        let tree = self.db.tree(trees::ROOMID_PUBLISHED)?;
        let mut out = Vec::new();
        let needle = search.map(str::to_lowercase);
        for item in tree.scan_prefix(b"") {
            let (k, _) = item?;
            let Ok(room_id) = RoomId::parse(String::from_utf8_lossy(&k).as_ref()) else { continue };
            let state = self.rooms.current_state(&room_id)?;
            let field = |kind: &str, key: &str| -> Result<Option<Value>> {
                Ok(self.rooms.state_pdu(&state, kind, "")?.and_then(|p| p.content_json().get(key).cloned()))
            };
            let joined = self.rooms.members(&room_id)?.iter().filter(|(_, m)| m == "join").count();
            let mut chunk = json!({
                "room_id": room_id,
                "num_joined_members": joined,
                "world_readable": field("m.room.history_visibility", "history_visibility")? == Some(json!("world_readable")),
                "guest_can_join": field("m.room.guest_access", "guest_access")? == Some(json!("can_join")),
                "join_rule": field("m.room.join_rules", "join_rule")?.unwrap_or(json!("invite")),
            });
            for (kind, key, out_key) in [
                ("m.room.name", "name", "name"),
                ("m.room.topic", "topic", "topic"),
                ("m.room.canonical_alias", "alias", "canonical_alias"),
                ("m.room.avatar", "url", "avatar_url"),
                ("m.room.create", "type", "room_type"),
            ] {
                if let Some(v) = field(kind, key)? {
                    chunk[out_key] = v;
                }
            }
            if let Some(n) = &needle {
                let text = format!(
                    "{} {} {}",
                    chunk["name"].as_str().unwrap_or_default(),
                    chunk["topic"].as_str().unwrap_or_default(),
                    chunk["canonical_alias"].as_str().unwrap_or_default()
                )
                .to_lowercase();
                if !text.contains(n.as_str()) {
                    continue;
                }
            }
            out.push(chunk);
        }
        out.sort_by(|a, b| {
            b["num_joined_members"]
                .as_u64()
                .cmp(&a["num_joined_members"].as_u64())
                .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        Ok(out)
    }
}
