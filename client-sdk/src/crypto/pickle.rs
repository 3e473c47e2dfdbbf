//! Serde support for the vodozemac objects the machine holds, through their
//! pickles, so that a [`CryptoMachine`](super::CryptoMachine) can be written
//! to an encrypted store and read back.
//!
//! A pickle holds private keys in the clear: it is only ever written by
//! [`Store`](crate::store::Store), which encrypts it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `#[serde(with = …)]` module for a vodozemac type with a pickle.
macro_rules! pickled {
    ($module:ident, $ty:ty, $pickle:ty) => {
        pub(crate) mod $module {
            use super::*;

            pub(crate) fn serialize<S: Serializer>(value: &$ty, serializer: S) -> Result<S::Ok, S::Error> {
                value.pickle().serialize(serializer)
            }

            pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                <$pickle>::deserialize(deserializer).map(<$ty>::from_pickle)
            }
        }
    };
}

pickled!(account, vodozemac::olm::Account, vodozemac::olm::AccountPickle);
pickled!(session, vodozemac::olm::Session, vodozemac::olm::SessionPickle);
pickled!(group_session, vodozemac::megolm::GroupSession, vodozemac::megolm::GroupSessionPickle);
pickled!(inbound_group_session, vodozemac::megolm::InboundGroupSession, vodozemac::megolm::InboundGroupSessionPickle);

/// A `#[serde(with = …)]` module for maps whose keys JSON cannot hold (such
/// as tuples): they are written as a list of pairs.
pub(crate) mod pairs {
    use super::*;

    pub(crate) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub(crate) fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Vec::<(K, V)>::deserialize(deserializer).map(|pairs| pairs.into_iter().collect())
    }
}
