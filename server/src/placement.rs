//! Where a workflow lives: on this server, on another server of the
//! cluster, or nowhere yet (its partition's lease ran out and nobody has
//! claimed it). A server alone (sled) holds everything.
//!
//! The view changes at each lease tick (`cluster`); a workflow's memory is
//! tied to the epoch its partition had when it was loaded, so that a
//! partition lost and claimed again never serves memory from before.

use std::collections::BTreeMap;
use std::sync::RwLock;

use stoa_engine::store::Parts;
use stoa_engine::WorkflowId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Here, at this epoch of its partition.
    Here(u64),
    /// At the server with this address.
    There(String),
    /// Its partition has no live owner now.
    Nobody(u32),
}

pub(crate) struct Placement {
    /// Partitions of the cluster; `None`: a server alone.
    count: Option<u32>,
    view: RwLock<View>,
}

#[derive(Default)]
pub(crate) struct View {
    /// Held partitions and their epochs.
    pub here: BTreeMap<u32, u64>,
    /// Each partition's owner's address, by partition.
    pub owners: Vec<Option<String>>,
    /// Every live member's address.
    pub members: Vec<String>,
}

impl Placement {
    /// A server alone: every workflow is here.
    pub fn alone() -> Placement {
        Placement { count: None, view: RwLock::default() }
    }

    /// A server of a cluster of `count` partitions, holding none yet.
    pub fn cluster(count: u32) -> Placement {
        Placement { count: Some(count.max(1)), view: RwLock::default() }
    }

    pub fn is_cluster(&self) -> bool {
        self.count.is_some()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn place(&self, id: &WorkflowId) -> Place {
        let Some(count) = self.count else { return Place::Here(0) };
        let p = id.partition(count);
        let view = self.read();
        if let Some(epoch) = view.here.get(&p) {
            return Place::Here(*epoch);
        }
        match view.owners.get(p as usize).cloned().flatten() {
            Some(address) => Place::There(address),
            None => Place::Nobody(p),
        }
    }

    /// Where the cluster's coordinator is: the owner of partition 0, which
    /// runs what the cluster does once (schedules, pack deploys and
    /// rollouts with their upgrade jobs). A server alone is its own.
    pub fn coordinator(&self) -> Place {
        if self.count.is_none() {
            return Place::Here(0);
        }
        let view = self.read();
        if let Some(epoch) = view.here.get(&0) {
            return Place::Here(*epoch);
        }
        match view.owners.first().cloned().flatten() {
            Some(address) => Place::There(address),
            None => Place::Nobody(0),
        }
    }

    pub fn is_coordinator(&self) -> bool {
        matches!(self.coordinator(), Place::Here(_))
    }

    /// The epoch of the workflow's partition if it is held here.
    pub fn epoch(&self, id: &WorkflowId) -> Option<u64> {
        match self.place(id) {
            Place::Here(e) => Some(e),
            _ => None,
        }
    }

    /// The partitions held here, as the store reads them.
    pub fn here(&self) -> Parts {
        match self.count {
            None => Parts::All,
            Some(count) => Parts::Some { count, ids: self.read().here.keys().copied().collect() },
        }
    }

    /// Some partitions of the cluster, as the store reads them.
    pub fn parts(&self, ids: &[u32]) -> Parts {
        Parts::Some { count: self.count.unwrap_or(1), ids: ids.iter().copied().collect() }
    }

    /// The live members' addresses (none for a server alone).
    pub fn members(&self) -> Vec<String> {
        self.read().members.clone()
    }

    pub fn set(&self, view: View) {
        *self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    /// Stops holding these partitions (handed back, or found moved).
    pub fn drop_parts(&self, parts: &[u32]) {
        let mut view = self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in parts {
            view.here.remove(p);
            if let Some(o) = view.owners.get_mut(*p as usize) {
                *o = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_alone_holds_everything_and_a_member_what_its_view_says() {
        let alone = Placement::alone();
        assert_eq!(alone.place(&WorkflowId::new("wf_a.1")), Place::Here(0));
        assert_eq!(alone.here(), Parts::All);
        let c = Placement::cluster(256);
        let (a1, b1) = (WorkflowId::new("wf_a.1"), WorkflowId::new("wf_b.1"));
        assert_eq!(c.place(&a1), Place::Nobody(77));
        let mut owners = vec![None; 256];
        owners[184] = Some("10.0.0.2:7000".to_string());
        c.set(View { here: [(77, 3)].into(), owners, members: vec!["me".into(), "10.0.0.2:7000".into()] });
        assert_eq!((c.place(&a1), c.epoch(&a1)), (Place::Here(3), Some(3)));
        assert_eq!(c.place(&b1), Place::There("10.0.0.2:7000".into()));
        assert!(c.here().has(&a1) && !c.here().has(&b1));
        c.drop_parts(&[77, 184]);
        assert_eq!((c.place(&a1), c.place(&b1)), (Place::Nobody(77), Place::Nobody(184)));
    }
}
