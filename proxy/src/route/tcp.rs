//! Opaque TCP routing as a VirtualService's `tcp` rules describe it (Istio's
//! `buildSidecarOutboundTCPListenerOpts`): rules in order, the first with a match that holds
//! wins; a rule without matches matches every connection; inside a rule the matches are
//! ORed and the fields of one match ANDed (`port`: the service port the connection was
//! addressed to; `destinationSubnets`: its destination address, the original destination of
//! a captured connection or the listener's own address in explicit mode). The winning rule's
//! destinations are picked per connection by relative weight, as HTTP routes are. When no
//! rule matches, the connection goes to the service itself (Envoy's default filter chain:
//! unlike HTTP, there is no "no route" for TCP).
//!
//! `sourceLabels`, `sourceNamespace` and `gateways` were evaluated by the control plane for
//! this proxy. Compiled once per snapshot; a connection compares integers and picks one
//! random number, allocating nothing.

use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::authz::matcher::Cidr;
use crate::route::{RouteError, Target};

/// One compiled `match` entry of a tcp rule.
#[derive(Debug, Default)]
pub struct L4Match {
    /// Service port; 0 = any.
    pub(crate) port: u16,
    /// Destination address blocks; empty = any.
    pub(crate) subnets: Vec<Cidr>,
}

impl L4Match {
    /// Whether a connection to service port `port` and address `dst` matches.
    pub fn matches(&self, port: u16, dst: Option<IpAddr>) -> bool {
        if self.port != 0 && self.port != port {
            return false;
        }
        if self.subnets.is_empty() {
            return true;
        }
        dst.is_some_and(|ip| self.subnets.iter().any(|c| c.contains(ip)))
    }

    /// Compiles a wire match; `rule` names the rule in errors.
    pub fn compile(m: &meshlite_xds_proto::v1::L4Match, rule: &str) -> Result<Self, RouteError> {
        let subnets = m
            .destination_subnets
            .iter()
            .map(|s| {
                Cidr::parse(s).map_err(|_| RouteError::Subnet {
                    route: rule.to_string(),
                    subnet: s.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            port: u16::try_from(m.port).unwrap_or(0),
            subnets,
        })
    }
}

/// One compiled tcp rule.
#[derive(Debug)]
pub struct TcpRule<C> {
    pub(crate) matches: Vec<L4Match>,
    pub(crate) targets: Vec<(Target<C>, u32)>,
    pub(crate) total_weight: u32,
}

impl<C> TcpRule<C> {
    /// A rule from its matches and weighted targets: one target gets everything whatever its
    /// weight; several keep only those of weight > 0 (refused when none has one).
    pub fn new(
        name: &str,
        matches: Vec<L4Match>,
        mut targets: Vec<(Target<C>, u32)>,
    ) -> Result<Self, RouteError> {
        if targets.len() == 1 {
            targets[0].1 = 1;
        } else {
            let given = targets.len();
            targets.retain(|(_, w)| *w > 0);
            if given > 0 && targets.is_empty() {
                return Err(RouteError::ZeroWeights(name.to_string()));
            }
        }
        let total_weight = targets.iter().map(|(_, w)| *w).sum();
        Ok(Self {
            matches,
            targets,
            total_weight,
        })
    }

    /// The target `roll` (uniform in `0..total_weight`) falls on.
    fn pick(&self, roll: u32) -> Option<&Target<C>> {
        super::pick_weighted(&self.targets, roll)
    }
}

/// The compiled tcp rules of one host.
#[derive(Debug)]
pub struct TcpRouteTable<C> {
    /// `namespace/name` of the VirtualService.
    pub origin: Arc<str>,
    pub(crate) rules: Vec<TcpRule<C>>,
}

impl<C> TcpRouteTable<C> {
    /// Where a connection to service port `port` and destination address `dst` goes: the
    /// first matching rule's destination, picked by weight; `None` when no rule matches (the
    /// connection goes to the service itself).
    pub fn select(&self, port: u16, dst: Option<IpAddr>) -> Option<&Target<C>> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(port, dst)))?;
        if rule.total_weight == 0 {
            return None;
        }
        rule.pick(fastrand::u32(..rule.total_weight))
    }

    /// How many rules it has.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether it has no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::build::wire::routes::ResolveDestination;
    use meshlite_xds_proto::v1;

    /// Names destinations `host/subset` so tests can see which one was chosen.
    struct ByName;

    impl ResolveDestination<()> for ByName {
        fn resolve(&self, dest: &v1::WeightedDestination, port: u16) -> Target<()> {
            Target::Missing(Arc::from(format!("{}/{}:{port}", dest.host, dest.subset)))
        }
    }

    fn dest(subset: &str, weight: u32) -> v1::WeightedDestination {
        v1::WeightedDestination {
            host: "db".into(),
            subset: subset.into(),
            weight,
            ..Default::default()
        }
    }

    fn table(tcp: Vec<v1::TcpRoute>) -> TcpRouteTable<()> {
        let wire = v1::RouteTable {
            hostname: "db".into(),
            origin: "default/db".into(),
            tcp,
            ..Default::default()
        };
        TcpRouteTable::compile(&wire, 5432, &ByName)
            .expect("compiles")
            .expect("has rules")
    }

    fn chosen(t: &TcpRouteTable<()>, port: u16, dst: Option<IpAddr>) -> String {
        match t.select(port, dst) {
            Some(Target::Missing(n)) => n.to_string(),
            Some(Target::Cluster(_)) => "a cluster".into(),
            None => "the service".into(),
        }
    }

    fn on_port(port: u32) -> v1::L4Match {
        v1::L4Match {
            port,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_rule_whose_port_matches_wins_and_no_match_means_the_service() {
        let t = table(vec![
            v1::TcpRoute {
                matches: vec![on_port(27017)],
                route: vec![dest("mongo", 0)],
            },
            v1::TcpRoute {
                matches: vec![on_port(5432), on_port(5433)],
                route: vec![dest("v2", 0)],
            },
            v1::TcpRoute {
                matches: vec![],
                route: vec![dest("v1", 0)],
            },
        ]);
        assert_eq!(chosen(&t, 5432, None), "db/v2:5432");
        assert_eq!(chosen(&t, 27017, None), "db/mongo:5432");
        assert_eq!(chosen(&t, 9999, None), "db/v1:5432", "a rule without match");
        let only_port = table(vec![v1::TcpRoute {
            matches: vec![on_port(27017)],
            route: vec![dest("mongo", 0)],
        }]);
        assert_eq!(chosen(&only_port, 5432, None), "the service");
    }

    #[test]
    fn destination_subnets_match_the_connections_destination() {
        let t = table(vec![v1::TcpRoute {
            matches: vec![v1::L4Match {
                port: 0,
                destination_subnets: vec!["10.1.0.0/16".into(), "127.0.0.1".into()],
            }],
            route: vec![dest("v2", 0)],
        }]);
        let ip = |s: &str| Some(s.parse().expect("ip"));
        assert_eq!(chosen(&t, 5432, ip("10.1.2.3")), "db/v2:5432");
        assert_eq!(chosen(&t, 5432, ip("127.0.0.1")), "db/v2:5432");
        assert_eq!(chosen(&t, 5432, ip("10.2.0.1")), "the service");
        assert_eq!(chosen(&t, 5432, None), "the service");
    }

    #[test]
    fn weights_are_relative_and_zero_weight_destinations_get_nothing() {
        let t = table(vec![v1::TcpRoute {
            matches: vec![],
            route: vec![dest("v1", 3), dest("v2", 1), dest("v3", 0)],
        }]);
        fastrand::seed(11);
        let n = 8_000;
        let mut v2 = 0;
        for _ in 0..n {
            match chosen(&t, 5432, None).as_str() {
                "db/v2:5432" => v2 += 1,
                "db/v1:5432" => {}
                other => panic!("weight-0 destination chosen: {other}"),
            }
        }
        let share = f64::from(v2) / f64::from(n);
        assert!((share - 0.25).abs() < 0.02, "v2 share {share}");
        // 100/0 then 0/100: all to one side.
        let all_v2 = table(vec![v1::TcpRoute {
            matches: vec![],
            route: vec![dest("v1", 0), dest("v2", 100)],
        }]);
        assert!((0..100).all(|_| chosen(&all_v2, 5432, None) == "db/v2:5432"));
        // A single destination takes everything whatever its weight.
        let single = table(vec![v1::TcpRoute {
            matches: vec![],
            route: vec![dest("v1", 0)],
        }]);
        assert_eq!(chosen(&single, 5432, None), "db/v1:5432");
    }

    #[test]
    fn all_zero_weights_and_bad_subnets_are_refused() {
        let compile = |tcp| {
            let wire = v1::RouteTable {
                tcp: vec![tcp],
                ..Default::default()
            };
            TcpRouteTable::<()>::compile(&wire, 5432, &ByName).map(|_| ())
        };
        let zero = compile(v1::TcpRoute {
            matches: vec![],
            route: vec![dest("v1", 0), dest("v2", 0)],
        });
        assert!(matches!(zero, Err(RouteError::ZeroWeights(_))), "{zero:?}");
        let bad = compile(v1::TcpRoute {
            matches: vec![v1::L4Match {
                port: 0,
                destination_subnets: vec!["10.0.0.0/99".into()],
            }],
            route: vec![dest("v1", 1)],
        });
        assert!(matches!(bad, Err(RouteError::Subnet { .. })), "{bad:?}");
    }

    #[test]
    fn a_table_without_tcp_rules_compiles_to_none() {
        let wire = v1::RouteTable {
            http: vec![v1::HttpRoute::default()],
            ..Default::default()
        };
        assert!(
            TcpRouteTable::<()>::compile(&wire, 5432, &ByName)
                .expect("compiles")
                .is_none()
        );
    }
}
