//! State resolution where the DAG forks: the room version's algorithm
//! (v2, or v2.1 for room version 12) from ruma's state-res, fed from storage.

use std::collections::HashSet;

use ruma::{
    EventId, OwnedEventId, RoomVersionId,
    events::StateEventType,
    state_res::{self, utils::event_id_set::EventIdSet},
};

use super::{Service, pdu, state::StateMap};
use crate::{
    error::{Error, Result},
    storage::{Batch, codec, trees},
};

impl Service {
    /// Every event reachable from `ids` through `auth_events`, including `ids`.
    fn auth_closure(&self, ids: impl IntoIterator<Item = OwnedEventId>) -> Result<HashSet<OwnedEventId>> {
        let mut seen = HashSet::new();
        let mut stack: Vec<OwnedEventId> = ids.into_iter().collect();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.pdu(&id)? {
                stack.extend(p.auth_events.iter().cloned());
            }
        }
        Ok(seen)
    }

    /// Resolves several states of one room into one.
    pub fn resolve_states(&self, version: &RoomVersionId, states: &[StateMap]) -> Result<StateMap> {
        if states.windows(2).all(|w| w[0] == w[1]) {
            return Ok(states.first().cloned().unwrap_or_default());
        }
        let rules = pdu::rules_for(version)?;
        let v2 = rules.state_res.v2_rules().ok_or_else(|| Error::internal("state resolution v1 is not supported"))?;
        let maps: Vec<state_res::StateMap<OwnedEventId>> = states
            .iter()
            .map(|s| s.iter().map(|((t, k), id)| ((StateEventType::from(t.as_str()), k.clone()), id.clone())).collect())
            .collect();
        // A state set's auth chain: everything its events reach through `auth_events`.
        let mut auth_chains = Vec::new();
        for state in states {
            let mut starts = Vec::new();
            for id in state.values() {
                if let Some(p) = self.pdu(id)? {
                    starts.extend(p.auth_events.iter().cloned());
                }
            }
            auth_chains.push(self.auth_closure(starts)?.into_iter().collect::<EventIdSet<_>>());
        }
        let fetch = |id: &EventId| self.pdu(id).ok().flatten();
        // The conflicted state subgraph (v2.1): events that are reachable from a
        // conflicted event and themselves reach a conflicted event.
        let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| -> Option<EventIdSet<OwnedEventId>> {
            let conflicted: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            let mut out = EventIdSet::new();
            for e in self.auth_closure(conflicted.iter().cloned()).ok()? {
                if self.auth_closure([e.clone()]).ok()?.iter().any(|d| conflicted.contains(d)) {
                    out.insert(e);
                }
            }
            Some(out)
        };
        let resolved = state_res::resolve(&rules.authorization, v2, &maps, auth_chains, fetch, subgraph)
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        Ok(resolved.into_iter().map(|((t, k), id)| ((t.to_string(), k), id)).collect())
    }

    /// The group holding the resolution of `groups` (one of them if they agree;
    /// otherwise a new full snapshot, whose writes go into `batch`).
    pub(super) fn resolved_group(&self, version: &RoomVersionId, groups: &[u64], batch: &mut Batch) -> Result<u64> {
        if let [only] = groups {
            return Ok(*only);
        }
        let states: Vec<StateMap> =
            groups.iter().map(|g| self.state.load(*g).map(|s| (*s).clone())).collect::<Result<_>>()?;
        if states.windows(2).all(|w| w[0] == w[1]) {
            return Ok(groups[0]);
        }
        let resolved = self.resolve_states(version, &states)?;
        let group = self.group_counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let changes: Vec<_> = resolved.into_iter().map(|((t, k), id)| (t, k, id)).collect();
        self.state.write_group(group, None, &changes, batch)?;
        batch.insert(trees::GLOBAL, super::GROUP_KEY.to_vec(), codec::u64_bytes(group).to_vec());
        Ok(group)
    }
}
