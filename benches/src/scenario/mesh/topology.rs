//! The call graph of the mesh scenario: which service calls which, and what follows from it: the
//! order to start apps in when each must know its callees' addresses (callees first), the hops on
//! the longest path (the divisor of "added latency per hop"), and how many app requests one entry
//! request becomes.
//!
//! A graph is given as a table of `(service, callees)` rows, the first row's service being the
//! entry; a service named only as a callee is a leaf. It must be a DAG whose every service is
//! reachable from the entry (a shared callee is allowed: it is called once per path).

/// The application the scenario runs: a small shop of 15 services, a frontend calling four
/// mid-tier services, which call ten leaves; every service is called once per entry request.
pub const SHOP: &[(&str, &[&str])] = &[
    ("frontend", &["catalog", "cart", "checkout", "account"]),
    ("catalog", &["products", "prices", "images"]),
    ("cart", &["inventory", "sessions"]),
    ("checkout", &["payments", "shipping", "currency"]),
    ("account", &["users", "recommendations"]),
];

/// One service and the services it calls (indices into [`Topology::services`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name (the `app` label, the service's short host name).
    pub name: String,
    /// The services it calls, concurrently, for every request it receives.
    pub calls: Vec<usize>,
}

/// Why a table is not a usable call graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The table has no rows.
    #[error("the call graph has no services")]
    Empty,
    /// A service has two rows.
    #[error("service {0} has two rows")]
    Duplicate(String),
    /// The calls loop.
    #[error("the calls form a cycle through {0}")]
    Cycle(String),
    /// A service cannot be reached from the entry.
    #[error("service {service} is not reachable from the entry {entry}")]
    Unreachable {
        /// The unreachable service.
        service: String,
        /// The entry.
        entry: String,
    },
}

/// A validated call graph; service 0 is the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    services: Vec<Service>,
    /// Callees before callers.
    order: Vec<usize>,
}

impl Topology {
    /// The shop of [`SHOP`].
    pub fn shop() -> Result<Self, TopologyError> {
        Self::from_table(SHOP)
    }

    /// Builds and checks the graph of `table` (first row: the entry).
    pub fn from_table(table: &[(&str, &[&str])]) -> Result<Self, TopologyError> {
        if table.is_empty() {
            return Err(TopologyError::Empty);
        }
        let mut services: Vec<Service> = Vec::new();
        let index_of = |services: &mut Vec<Service>, name: &str| -> usize {
            if let Some(i) = services.iter().position(|s| s.name == name) {
                return i;
            }
            services.push(Service {
                name: name.to_string(),
                calls: Vec::new(),
            });
            services.len() - 1
        };
        let mut rows_seen: Vec<&str> = Vec::new();
        for (name, callees) in table {
            if rows_seen.contains(name) {
                return Err(TopologyError::Duplicate((*name).to_string()));
            }
            rows_seen.push(name);
            let caller = index_of(&mut services, name);
            for callee in *callees {
                let callee = index_of(&mut services, callee);
                services[caller].calls.push(callee);
            }
        }
        let order = post_order(&services)?;
        if let Some(missing) = (0..services.len()).find(|i| !order.contains(i)) {
            return Err(TopologyError::Unreachable {
                service: services[missing].name.clone(),
                entry: services[0].name.clone(),
            });
        }
        Ok(Self { services, order })
    }

    /// Every service, the entry first.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The order to start apps in: every service after all it calls.
    pub fn start_order(&self) -> &[usize] {
        &self.order
    }

    /// Network hops on the longest path of one entry request: the caller's hop into the entry
    /// plus one per call on the deepest chain (frontend -> catalog -> products: 3).
    pub fn hops(&self) -> usize {
        self.depths().first().copied().unwrap_or(0)
    }

    /// For each service, the services on the longest chain starting at it (itself included).
    fn depths(&self) -> Vec<usize> {
        let mut depth = vec![0usize; self.services.len()];
        for &i in &self.order {
            depth[i] = 1 + self.services[i]
                .calls
                .iter()
                .map(|&c| depth[c])
                .max()
                .unwrap_or(0);
        }
        depth
    }

    /// How many requests each service's app receives per entry request (one per path to it).
    pub fn requests_per_entry_request(&self) -> Vec<u64> {
        let mut received = vec![0u64; self.services.len()];
        if let Some(entry) = received.first_mut() {
            *entry = 1;
        }
        // Callers before callees: the reverse of the start order.
        for &i in self.order.iter().rev() {
            let n = received[i];
            for &c in &self.services[i].calls {
                received[c] += n;
            }
        }
        received
    }

    /// Services per depth from the entry (`[1, 4, 10]` for the shop), by longest distance.
    pub fn tiers(&self) -> Vec<usize> {
        let mut level = vec![0usize; self.services.len()];
        for &i in self.order.iter().rev() {
            for &c in &self.services[i].calls {
                level[c] = level[c].max(level[i] + 1);
            }
        }
        let mut tiers = vec![0usize; level.iter().copied().max().map_or(0, |m| m + 1)];
        for l in level {
            tiers[l] += 1;
        }
        tiers
    }

    /// The names on one longest path from the entry.
    pub fn longest_path(&self) -> Vec<&str> {
        let depth = self.depths();
        let mut path = Vec::new();
        let mut at = 0;
        loop {
            path.push(self.services[at].name.as_str());
            // `max_by_key` keeps the last of equals: reversed, the first callee wins a tie.
            match self.services[at]
                .calls
                .iter()
                .rev()
                .max_by_key(|&&c| depth[c])
            {
                Some(&next) => at = next,
                None => return path,
            }
        }
    }
}

/// Depth-first post-order from the entry (callees first); a cycle is an error.
fn post_order(services: &[Service]) -> Result<Vec<usize>, TopologyError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; services.len()];
    let mut order = Vec::with_capacity(services.len());
    // Explicit stack of (service, next callee to visit): no recursion limit on deep chains.
    let mut stack = vec![(0usize, 0usize)];
    marks[0] = Mark::Open;
    while let Some((at, next)) = stack.pop() {
        match services[at].calls.get(next) {
            Some(&callee) => {
                stack.push((at, next + 1));
                match marks[callee] {
                    Mark::Open => return Err(TopologyError::Cycle(services[callee].name.clone())),
                    Mark::Done => {}
                    Mark::New => {
                        marks[callee] = Mark::Open;
                        stack.push((callee, 0));
                    }
                }
            }
            None => {
                marks[at] = Mark::Done;
                order.push(at);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shop_has_15_services_in_three_tiers_and_three_hops() {
        let Ok(shop) = Topology::shop() else {
            panic!("the shop is a valid graph");
        };
        assert_eq!(shop.services().len(), 15);
        assert_eq!(shop.hops(), 3);
        assert_eq!(shop.tiers(), vec![1, 4, 10]);
        assert_eq!(
            shop.requests_per_entry_request().iter().sum::<u64>(),
            15,
            "every service is called once per entry request"
        );
        assert_eq!(shop.longest_path(), vec!["frontend", "catalog", "products"]);
    }

    #[test]
    fn apps_start_after_everything_they_call() {
        let Ok(shop) = Topology::shop() else {
            panic!("the shop is a valid graph");
        };
        let order = shop.start_order();
        assert_eq!(order.len(), 15);
        assert_eq!(order.last(), Some(&0), "the entry starts last");
        for (position, &i) in order.iter().enumerate() {
            for callee in &shop.services()[i].calls {
                let callee_position = order.iter().position(|x| x == callee);
                assert!(callee_position.is_some_and(|p| p < position));
            }
        }
    }

    #[test]
    fn a_shared_callee_is_called_once_per_path() {
        let diamond: &[(&str, &[&str])] = &[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"])];
        let Ok(t) = Topology::from_table(diamond) else {
            panic!("a diamond is a valid graph");
        };
        assert_eq!(t.requests_per_entry_request(), vec![1, 1, 1, 2]);
        assert_eq!(t.hops(), 3);
        assert_eq!(t.tiers(), vec![1, 2, 1]);
        let chain: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &["c"]), ("c", &["d"])];
        assert_eq!(Topology::from_table(chain).map(|t| t.hops()), Ok(4));
        assert_eq!(
            Topology::from_table(&[("alone", &[])]).map(|t| (t.hops(), t.tiers())),
            Ok((1, vec![1]))
        );
    }

    #[test]
    fn bad_graphs_are_refused_with_the_service_named() {
        assert_eq!(Topology::from_table(&[]), Err(TopologyError::Empty));
        assert_eq!(
            Topology::from_table(&[("a", &["b"]), ("b", &["a"])]),
            Err(TopologyError::Cycle("a".into()))
        );
        assert_eq!(
            Topology::from_table(&[("a", &["a"])]),
            Err(TopologyError::Cycle("a".into()))
        );
        assert_eq!(
            Topology::from_table(&[("a", &["b"]), ("a", &["c"])]),
            Err(TopologyError::Duplicate("a".into()))
        );
        assert_eq!(
            Topology::from_table(&[("a", &["b"]), ("c", &["d"])]),
            Err(TopologyError::Unreachable {
                service: "c".into(),
                entry: "a".into()
            })
        );
    }
}
