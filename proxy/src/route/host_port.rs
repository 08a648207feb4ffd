//! One port of a host the app may call, and the selection of where a request to it goes: the
//! VirtualService's choice, else the service's own cluster.

use std::sync::Arc;

use crate::route::{RouteBehaviour, RouteTable, Target};

/// One port of a host the app may call: its service cluster and, when a VirtualService
/// claims the host, the compiled routes.
#[derive(Debug)]
pub struct HostPort<C> {
    /// Service port.
    pub port: u16,
    /// The service's own cluster (all endpoints).
    pub cluster: Arc<C>,
    /// VirtualService routes for this host and port.
    pub routes: Option<RouteTable<C>>,
    /// The VirtualService's `tcp` rules, for connections relayed as opaque TCP.
    pub tcp_routes: Option<crate::route::tcp::TcpRouteTable<C>>,
    /// What requests get when no VirtualService claims the host (one, shared by the
    /// snapshot's host ports: it is the same for all and over 500 bytes).
    pub default_behaviour: Arc<RouteBehaviour<C>>,
    /// What `routes` and `tcp_routes` were compiled from, for the next snapshot to keep
    /// them (and this host port) while neither the table nor its destinations moved.
    pub source: Option<RoutesSource<C>>,
}

/// The VirtualService table a host port's routes were compiled from, and what each of its
/// destinations resolved to then.
#[derive(Debug)]
pub struct RoutesSource<C> {
    /// The table as pushed.
    pub table: Arc<meshlite_xds_proto::v1::RouteTable>,
    /// Each destination named by the table (in the order compiling asked) with its target.
    pub resolved: Vec<(meshlite_xds_proto::v1::WeightedDestination, Target<C>)>,
}

impl<C> RoutesSource<C> {
    /// Whether routes compiled from `table`, with destinations resolving as `resolve` says,
    /// would be the ones compiled from this source.
    pub fn holds(
        &self,
        table: &Arc<meshlite_xds_proto::v1::RouteTable>,
        resolve: impl Fn(&meshlite_xds_proto::v1::WeightedDestination) -> Target<C>,
    ) -> bool {
        (Arc::ptr_eq(&self.table, table) || self.table == *table)
            && self
                .resolved
                .iter()
                .all(|(dest, target)| resolve(dest).same(target))
    }
}

/// The outcome of routing one request.
#[derive(Debug)]
pub struct Routed<'a, C> {
    /// The host's own service cluster (for telemetry when the rule answers itself).
    pub service: &'a Arc<C>,
    /// Where the request goes; `None` when the rule answers itself (redirect, direct
    /// response).
    pub cluster: Option<&'a Arc<C>>,
    /// What the rule does on the way.
    pub behaviour: &'a RouteBehaviour<C>,
    /// The weighted destination chosen, with its header operations.
    pub destination: Option<&'a crate::route::Destination<C>>,
    /// How much of the path a `rewrite.uri` replaces.
    pub prefix_len: Option<usize>,
}

impl<C> Clone for Routed<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Routed<'_, C> {}

/// Where an opaque TCP connection goes.
#[derive(Debug)]
pub enum TcpChoice<'a, C> {
    /// A cluster of the snapshot.
    Cluster(&'a Arc<C>),
    /// A destination this proxy has no cluster for (closed, flag `NC`).
    Missing(&'a Arc<str>),
}

/// Why a request found no destination.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMiss {
    /// No service has this name.
    UnknownHost,
    /// The service exists, but not on the requested port.
    UnknownPort,
    /// The host has route rules and none matched (404 `NR`).
    NoMatchingRoute,
    /// The chosen route names a subset or host this proxy has no cluster for (503 `NC`).
    NoCluster(Arc<str>),
}

impl<C> HostPort<C> {
    /// Where an opaque TCP connection to this port goes, addressed to `dst` (its original
    /// destination, or the explicit listener's address): the VirtualService's `tcp` choice,
    /// else the service itself.
    pub fn select_tcp(&self, dst: Option<std::net::IpAddr>) -> TcpChoice<'_, C> {
        match self
            .tcp_routes
            .as_ref()
            .and_then(|t| t.select(self.port, dst))
        {
            None => TcpChoice::Cluster(&self.cluster),
            Some(Target::Cluster(c)) => TcpChoice::Cluster(c),
            Some(Target::Missing(name)) => TcpChoice::Missing(name),
        }
    }

    /// Where a request goes (its VirtualService's choice, else the service itself) and what
    /// its rule does on the way.
    pub fn select(
        &self,
        req: crate::route::Head<'_>,
        authority: &str,
    ) -> Result<Routed<'_, C>, RouteMiss> {
        let Some(table) = &self.routes else {
            return Ok(Routed {
                service: &self.cluster,
                cluster: Some(&self.cluster),
                behaviour: &*self.default_behaviour,
                destination: None,
                prefix_len: None,
            });
        };
        let selected = table
            .select(req, authority, self.port)
            .ok_or(RouteMiss::NoMatchingRoute)?;
        let cluster = match selected.destination.map(|d| &d.target) {
            None => None,
            Some(Target::Cluster(c)) => Some(c),
            Some(Target::Missing(name)) => return Err(RouteMiss::NoCluster(name.clone())),
        };
        Ok(Routed {
            service: &self.cluster,
            cluster,
            behaviour: &selected.route.behaviour,
            destination: selected.destination,
            prefix_len: selected.prefix_len,
        })
    }
}
