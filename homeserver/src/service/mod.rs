//! Services hold the rules. Handlers (client API now, federation and
//! appservices later) call them; they call the storage layer.

pub mod account_data;
pub mod audit;
pub mod backup;
pub mod directory;
pub mod email;
pub mod keys;
pub mod lockout;
pub mod locks;
pub mod mfa;
pub mod password_auth;
pub mod pushrules;
pub mod ratelimit;
pub mod receipts;
pub mod rooms;
pub mod server_keys;
pub mod sessions;
pub mod sso;
pub mod sync;
pub mod to_device;
pub mod uiaa;
pub mod users;

use std::sync::Arc;

use crate::{config::Config, error::Result, storage::Db};

/// Every service, shared by all handlers.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Db,
    pub users: users::Service,
    pub sessions: sessions::Service,
    pub lockout: lockout::Service,
    pub mfa: mfa::Service,
    pub email: email::Service,
    pub sso: sso::Service,
    pub uiaa: uiaa::Service,
    pub ratelimit: ratelimit::Service,
    pub audit: audit::Service,
    pub server_keys: Arc<server_keys::Service>,
    pub rooms: rooms::Service,
    pub locks: Arc<locks::UserLocks>,
    pub typing: receipts::Typing,
    /// Unread counts already computed, per room and user.
    pub unread_memo:
        std::sync::Mutex<std::collections::HashMap<(ruma::OwnedRoomId, ruma::OwnedUserId), pushrules::UnreadMemo>>,
}

impl Services {
    /// Builds every service over an opened, migrated database.
    pub fn build(config: Arc<Config>, db: Db) -> Result<Arc<Self>> {
        let audit = audit::Service::open(&config.audit_path()).map_err(crate::error::Error::internal)?;
        let locks = Arc::new(locks::UserLocks::new());
        let server_keys = Arc::new(server_keys::Service::load_or_generate(&db)?);
        Ok(Arc::new(Self {
            users: users::Service::new(config.clone(), db.clone()),
            sessions: sessions::Service::new(config.clone(), db.clone(), locks.clone()),
            lockout: lockout::Service::new(config.clone(), db.clone(), locks.clone()),
            mfa: mfa::Service::new(&config, db.clone(), locks.clone())?,
            email: email::Service::new(config.clone(), db.clone())?,
            sso: sso::Service::default(),
            locks,
            typing: receipts::Typing::new(),
            unread_memo: Default::default(),
            uiaa: uiaa::Service::new(),
            ratelimit: ratelimit::Service::new(config.rate_limits.clone()),
            rooms: rooms::Service::new(config.clone(), db.clone(), server_keys.clone())?,
            server_keys,
            audit,
            config,
            db,
        }))
    }
}

impl Services {
    /// Deactivates an account and ends all its sessions in one atomic write.
    pub async fn deactivate_account(&self, user_id: &ruma::UserId) -> Result<()> {
        let guard = self.locks.lock(user_id).await;
        let mut batch = crate::storage::Batch::new();
        self.users.deactivation_batch(user_id, &mut batch)?;
        let removed = self.remove_devices_batch(user_id, keys::DeviceSelection::AllExcept(None), &mut batch)?;
        self.commit_device_removal(user_id, batch, guard, !removed.is_empty()).await?;
        tracing::info!(user = %user_id, "deactivated account");
        Ok(())
    }

    /// Sets a new password in one atomic write, optionally logging out every
    /// device but `keep`, and clearing any lockout.
    pub async fn change_password(
        &self,
        user_id: &ruma::UserId,
        password: String,
        logout: Option<Option<&ruma::DeviceId>>,
    ) -> Result<()> {
        let hash = self.users.hash_password(password).await?;
        let guard = self.locks.lock(user_id).await;
        let mut batch = crate::storage::Batch::new();
        self.users.password_batch(user_id, hash, &mut batch)?;
        let mut removed = Vec::new();
        if let Some(keep) = logout {
            removed = self.remove_devices_batch(user_id, keys::DeviceSelection::AllExcept(keep), &mut batch)?;
        }
        self.lockout.clear_batch(user_id, &mut batch);
        self.commit_device_removal(user_id, batch, guard, !removed.is_empty()).await
    }

    /// Commits a write that removed devices, announcing the device-list
    /// change at its stream position when any device went away.
    pub async fn commit_device_removal<G>(
        &self,
        user_id: &ruma::UserId,
        batch: crate::storage::Batch,
        guard: G,
        changed: bool,
    ) -> Result<()> {
        let user = user_id.to_owned();
        self.rooms
            .commit_at_next_position(batch, Some(guard), move |stream, batch| {
                if changed {
                    keys::record_key_change(batch, stream, &user);
                }
            })
            .await?;
        Ok(())
    }
}
