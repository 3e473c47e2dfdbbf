//! The server's federation signing key (ed25519): generated on first start,
//! persisted in the `global` tree. Besides the TLS key it is the only private
//! key the server holds.

use ruma::signatures::Ed25519KeyPair;

use crate::{
    error::{Error, Result},
    storage::{Batch, Db, trees},
    util::random_string,
};

const KEY: &[u8] = b"signing_key";
const KEY_ID: &[u8] = b"signing_key_id";

pub struct Service {
    keypair: Ed25519KeyPair,
}

impl Service {
    /// Loads the key, generating and storing it if the database has none.
    pub fn load_or_generate(db: &Db) -> Result<Self> {
        let global = db.tree(trees::GLOBAL)?;
        let (der, version) = match (global.get(KEY)?, global.get(KEY_ID)?) {
            (Some(der), Some(id)) => (der, String::from_utf8(id).map_err(Error::internal)?),
            _ => {
                let der = Ed25519KeyPair::generate().to_vec();
                let version = random_string(6);
                let mut batch = Batch::new();
                batch.insert(trees::GLOBAL, KEY.to_vec(), der.clone());
                batch.insert(trees::GLOBAL, KEY_ID.to_vec(), version.as_bytes().to_vec());
                db.apply(batch)?;
                db.flush_now()?;
                tracing::info!(key_id = %format!("ed25519:{version}"), "generated the server signing key");
                (der, version)
            }
        };
        let keypair = Ed25519KeyPair::from_der(&der, version).map_err(Error::internal)?;
        Ok(Self { keypair })
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }

    /// The public key, unpadded standard base64 as Matrix writes keys.
    pub fn public_key_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.keypair.public_key())
    }

    pub fn keypair(&self) -> &Ed25519KeyPair {
        &self.keypair
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn key_is_generated_once_and_reloaded() {
        let db = Db::new(Arc::new(MemoryStore::new()));
        let a = Service::load_or_generate(&db).unwrap();
        let b = Service::load_or_generate(&db).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.public_key_base64(), b.public_key_base64());
        assert!(a.key_id().starts_with("ed25519:"));
    }
}
