//! Every tree of the database, declared in one place with its key layout.
//!
//! Names read `<keyparts>_<value>`. `SEP` is `0xFF` (see [`super::codec`]);
//! integers are 8-byte big-endian. Values are JSON unless stated otherwise.

/// A declared tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeDef {
    pub name: &'static str,
    /// Key layout and value, for readers of the code and of `docs/architecture.md`.
    pub layout: &'static str,
}

/// Server-wide singletons: `schema_version` (u64 BE), `signing_key` (PKCS#8 DER of the
/// server's ed25519 key), `signing_key_id` (UTF-8), `stream_position` and
/// `state_group_counter` (u64 BE, the last values handed out).
pub const GLOBAL: &str = "global";
/// `user_id` → account record (password hash, admin flag, deactivation, creation time).
pub const USERID_ACCOUNT: &str = "userid_account";
/// `user_id` → profile (`displayname`, `avatar_url`).
pub const USERID_PROFILE: &str = "userid_profile";
/// `user_id SEP medium SEP address` → third-party identifier record.
pub const USERIDTHREEPID_INFO: &str = "useridthreepid_info";
/// `user_id SEP device_id` → device record (display name, last seen, token hashes).
pub const USERDEVICEID_DEVICE: &str = "userdeviceid_device";
/// SHA-256 of an access token (32 bytes) → session (`user_id`, `device_id`, expiry).
pub const TOKENHASH_SESSION: &str = "tokenhash_session";
/// SHA-256 of a refresh token (32 bytes) → session (`user_id`, `device_id`).
pub const REFRESHHASH_SESSION: &str = "refreshhash_session";
/// `user_id` → failed-login state (consecutive failures, locked-until time).
pub const USERID_LOGINFAILURES: &str = "userid_loginfailures";
/// A verified e-mail address (lowercase) → the user it belongs to.
pub const EMAIL_USERID: &str = "email_userid";
/// An e-mail verification session ID → the session.
pub const SID_EMAILVALIDATION: &str = "sid_emailvalidation";
/// `user_id` → the TOTP record, sealed with the MFA key.
pub const USERID_TOTP: &str = "userid_totp";

/// Event ID → the signed PDU as canonical JSON (after redaction, the redacted form).
pub const EVENTID_PDU: &str = "eventid_pdu";
/// Event ID → where the event sits: room, stream position, state group before and after it.
pub const EVENTID_INFO: &str = "eventid_info";
/// `room_id SEP stream (u64 BE)` → event ID: each room's timeline in order.
pub const ROOMSTREAM_EVENTID: &str = "roomstream_eventid";
/// Room ID → room record: version, current state group, forward extremities, depth.
pub const ROOMID_ROOM: &str = "roomid_room";
/// State group (u64 BE) → a delta over its parent group (or a full snapshot).
pub const STATEGROUP_DELTA: &str = "stategroup_delta";
/// `user_id SEP room_id` → the user's membership in the room and its stream position.
pub const USERROOMID_MEMBERSHIP: &str = "userroomid_membership";
/// `room_id SEP user_id` → membership, to list a room's members.
pub const ROOMUSERID_MEMBERSHIP: &str = "roomuserid_membership";

/// `user_id SEP device_id SEP txn_id` → event ID: idempotent sends.
pub const USERDEVICETXN_EVENTID: &str = "userdevicetxn_eventid";

/// `user_id SEP filter_id` → a saved sync filter (JSON).
pub const USERFILTERID_FILTER: &str = "userfilterid_filter";

/// `user_id SEP room_id ("" for global) SEP type` → `{content, stream}` account data.
pub const USERROOMTYPE_ACCOUNTDATA: &str = "userroomtype_accountdata";
/// `room_id SEP receipt_type SEP user_id SEP thread` → `{event_id, ts, stream}`.
pub const ROOMRECEIPT_DATA: &str = "roomreceipt_data";

/// Room alias → `{room_id, creator}`.
pub const ALIAS_ROOMID: &str = "alias_roomid";
/// `room_id SEP alias` → empty: a room's local aliases.
pub const ROOMALIAS_EMPTY: &str = "roomalias_empty";
/// Room ID → empty: rooms published in the room directory.
pub const ROOMID_PUBLISHED: &str = "roomid_published";

/// `user_id SEP device_id` → the device's signed identity keys (`DeviceKeys`, canonical JSON).
pub const USERDEVICEID_DEVICEKEYS: &str = "userdeviceid_devicekeys";
/// `user_id SEP device_id SEP "algorithm:key_id"` → a signed one-time key, until it is claimed.
pub const USERDEVICEKEYID_ONETIMEKEY: &str = "userdevicekeyid_onetimekey";
/// `user_id SEP device_id SEP algorithm` → `{key_id, key, used}`: the device's fallback key.
pub const USERDEVICEALG_FALLBACKKEY: &str = "userdevicealg_fallbackkey";
/// `user_id SEP usage` (`master`, `self_signing`, `user_signing`) → cross-signing key.
pub const USERUSAGE_CROSSSIGNINGKEY: &str = "userusage_crosssigningkey";
/// `target_user SEP key_id SEP signer_user SEP signer_key_id` → signature: another user's
/// signature of a user's master key, shown only to the signer.
pub const KEYSIGNER_SIGNATURE: &str = "keysigner_signature";
/// `stream (u64 BE) SEP user_id` → empty: the user's devices or keys changed at that position.
pub const STREAMUSER_KEYCHANGE: &str = "streamuser_keychange";
/// Public key (unpadded base64) → `{user_id, device_id, ts}`: keys an admin declared compromised.
pub const KEY_COMPROMISED: &str = "key_compromised";
/// `user_id SEP device_id SEP stream (u64 BE) SEP index (u64 BE)` → `{sender, type, content}`:
/// to-device messages waiting for the device to sync past them.
pub const USERDEVICESTREAM_TODEVICE: &str = "userdevicestream_todevice";
/// `user_id SEP device_id SEP txn_id` → empty: `sendToDevice` transactions already handled.
pub const USERDEVICETXN_TODEVICE: &str = "userdevicetxn_todevice";
/// `user_id SEP version (u64 BE)` → `{algorithm, auth_data, etag}`: key-backup versions.
pub const USERVERSION_BACKUP: &str = "userversion_backup";
/// `user_id SEP version (u64 BE) SEP room_id SEP session_id` → encrypted backed-up session (opaque).
pub const USERVERSIONROOMSESSION_BACKUPKEY: &str = "userversionroomsession_backupkey";

/// All trees, in the order they are opened.
pub const ALL: &[TreeDef] = &[
    TreeDef {
        name: GLOBAL,
        layout: "name → value: schema_version, stream_position, state_group_counter (u64 BE), signing_key (PKCS#8 DER), signing_key_id",
    },
    TreeDef { name: USERID_ACCOUNT, layout: "user_id → {password_hash, admin, deactivated, created_ts}" },
    TreeDef { name: USERID_PROFILE, layout: "user_id → {displayname?, avatar_url?}" },
    TreeDef {
        name: USERIDTHREEPID_INFO,
        layout: "user_id SEP medium SEP address → {medium, address, added_at, validated_at?}",
    },
    TreeDef {
        name: USERDEVICEID_DEVICE,
        layout: "user_id SEP device_id → {display_name?, last_seen_ip?, last_seen_ts?, created_ts, access_token_hash, refresh_token_hash?}",
    },
    TreeDef { name: TOKENHASH_SESSION, layout: "sha256(access_token) → {user_id, device_id, expires_at?}" },
    TreeDef { name: REFRESHHASH_SESSION, layout: "sha256(refresh_token) → {user_id, device_id}" },
    TreeDef { name: EMAIL_USERID, layout: "verified e-mail address (lowercase) → user_id" },
    TreeDef {
        name: SID_EMAILVALIDATION,
        layout: "sid → {purpose, email, client_secret, send_attempt, token hashes, created, validated_at?, failures}",
    },
    TreeDef { name: USERID_LOGINFAILURES, layout: "user_id → {failures, locked_until?}" },
    TreeDef {
        name: USERID_TOTP,
        layout: "user_id → nonce ‖ XChaCha20-Poly1305({secret, active, last_step, recovery hashes})",
    },
    TreeDef { name: EVENTID_PDU, layout: "event_id → signed PDU (canonical JSON)" },
    TreeDef { name: EVENTID_INFO, layout: "event_id → {room_id, stream, state_before, state_after}" },
    TreeDef { name: ROOMSTREAM_EVENTID, layout: "room_id SEP stream (u64 BE) → event_id" },
    TreeDef { name: ROOMID_ROOM, layout: "room_id → {version, state_group, extremities, depth, create_event_id}" },
    TreeDef {
        name: STATEGROUP_DELTA, layout: "group (u64 BE) → {parent?, depth, set: [[type, state_key, event_id]]}"
    },
    TreeDef { name: USERROOMID_MEMBERSHIP, layout: "user_id SEP room_id → {membership, stream}" },
    TreeDef { name: ROOMUSERID_MEMBERSHIP, layout: "room_id SEP user_id → membership" },
    TreeDef { name: USERDEVICETXN_EVENTID, layout: "user_id SEP device_id SEP txn_id → event_id" },
    TreeDef { name: USERFILTERID_FILTER, layout: "user_id SEP filter_id → filter definition (JSON)" },
    TreeDef {
        name: USERROOMTYPE_ACCOUNTDATA,
        layout: "user_id SEP room_id (empty: global) SEP type → {content, stream}",
    },
    TreeDef {
        name: ROOMRECEIPT_DATA,
        layout: "room_id SEP receipt_type SEP user_id SEP thread → {event_id, ts, stream}",
    },
    TreeDef { name: ALIAS_ROOMID, layout: "room alias → {room_id, creator}" },
    TreeDef { name: ROOMALIAS_EMPTY, layout: "room_id SEP alias → (empty)" },
    TreeDef { name: ROOMID_PUBLISHED, layout: "room_id → (empty): published in the room directory" },
    TreeDef { name: USERDEVICEID_DEVICEKEYS, layout: "user_id SEP device_id → signed device keys (canonical JSON)" },
    TreeDef {
        name: USERDEVICEKEYID_ONETIMEKEY,
        layout: "user_id SEP device_id SEP algorithm:key_id → signed one-time key (JSON)",
    },
    TreeDef { name: USERDEVICEALG_FALLBACKKEY, layout: "user_id SEP device_id SEP algorithm → {key_id, key, used}" },
    TreeDef { name: USERUSAGE_CROSSSIGNINGKEY, layout: "user_id SEP usage → cross-signing key (JSON)" },
    TreeDef {
        name: KEYSIGNER_SIGNATURE,
        layout: "target_user SEP key_id SEP signer_user SEP signer_key_id → signature (UTF-8)",
    },
    TreeDef { name: STREAMUSER_KEYCHANGE, layout: "stream (u64 BE) SEP user_id → (empty)" },
    TreeDef { name: KEY_COMPROMISED, layout: "public key (base64) → {user_id, device_id, ts}" },
    TreeDef {
        name: USERDEVICESTREAM_TODEVICE,
        layout: "user_id SEP device_id SEP stream (u64 BE) SEP index (u64 BE) → {sender, type, content}",
    },
    TreeDef { name: USERDEVICETXN_TODEVICE, layout: "user_id SEP device_id SEP txn_id → (empty)" },
    TreeDef { name: USERVERSION_BACKUP, layout: "user_id SEP version (u64 BE) → {algorithm, auth_data, etag}" },
    TreeDef {
        name: USERVERSIONROOMSESSION_BACKUPKEY,
        layout: "user_id SEP version (u64 BE) SEP room_id SEP session_id → KeyBackupData (JSON)",
    },
];

#[cfg(test)]
mod tests {
    #[test]
    fn tree_names_are_unique_and_documented() {
        let mut names: Vec<&str> = super::ALL.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::ALL.len());
        assert!(super::ALL.iter().all(|t| !t.layout.is_empty()));
        // Every tree constant of this module is declared in ALL.
        let source = include_str!("trees.rs");
        for line in source.lines().filter(|l| l.starts_with("pub const ") && l.contains(": &str")) {
            let value = line.split('"').nth(1).expect("a quoted tree name");
            assert!(names.contains(&value), "{value} is not in ALL");
        }
    }
}
