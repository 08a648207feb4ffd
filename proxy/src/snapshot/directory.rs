//! The services a sidecar fetching on demand knows but has not fetched: their names, ports
//! and addresses, each leading to a cluster that awaits its first call.
//!
//! Most of a mesh is never called by a given app, and a fetch or a push of the few it calls
//! must not cost the rest. So the services known before their fetch are one directory, built
//! from the control plane's list of them and shared by every snapshot while that list is the
//! same one (a fetch or an Endpoints push leaves it as it is). A snapshot holds the services
//! it has fetched apart; they are looked up first and shadow the directory's entry for the
//! same service, which stays, stale and unused, until the list changes.

use std::collections::HashMap;
use std::sync::Arc;

use super::build::ClusterContext;
use super::{AddressIndex, HostPort};
use crate::source::ServiceSpec;

/// The known services as a snapshot looks them up: by name and by address.
#[derive(Debug)]
pub struct Directory {
    /// The list it was built from (the next snapshot keeps it while its view hands the same
    /// list).
    pub(crate) source: Arc<Vec<Arc<ServiceSpec>>>,
    /// What its clusters were made with (a new one makes it again).
    pub(crate) ctx: Arc<ClusterContext>,
    /// Host ports by every name they answer to.
    pub(crate) hosts: HashMap<Box<str>, Vec<Arc<HostPort>>>,
    /// Every service port, in the list's order.
    pub(crate) ports: Vec<Arc<HostPort>>,
    /// Service ports by virtual IP and endpoint address.
    pub(crate) addresses: AddressIndex,
}

impl Directory {
    /// How many service ports it knows.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}
