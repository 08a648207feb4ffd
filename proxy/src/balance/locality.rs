//! Locality-aware balancing, as istiod programs Envoy from `localityLbSetting`
//! (SEMANTICS.md §1.2): endpoints get a priority relative to the caller's locality (same
//! zone first, then same region, then elsewhere; `failover` and `failoverPriority` reorder
//! the ladder), and Envoy sends each priority the share of traffic its health allows, with
//! an overprovisioning factor of 1.4, spilling the rest to the next. `distribute` instead
//! sets weights per destination locality for callers in a source locality, and endpoints in
//! localities it does not name get nothing.
//!
//! Pure functions over [`Locality`] values: the snapshot applies them when it builds a
//! cluster's host set.

use crate::source::labels::LabelLookup;

/// A `region/zone/subzone` (empty parts: unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

impl Locality {
    /// Parses `region[/zone[/subzone]]`.
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/');
        let mut next = || parts.next().unwrap_or_default().to_string();
        Self {
            region: next(),
            zone: next(),
            sub_zone: next(),
        }
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Whether `pattern` (`region/zone/subzone`, each part a value or `*`, missing trailing
    /// parts meaning any) matches this locality.
    pub fn matches(&self, pattern: &str) -> bool {
        let mut parts = pattern.split('/');
        [&self.region, &self.zone, &self.sub_zone]
            .into_iter()
            .all(|have| match parts.next() {
                None | Some("*") => true,
                Some(want) => want == have,
            })
    }
}

/// The caller-relative setting, after Istio's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalitySetting {
    /// `distribute`: `(from, [(to, weight)])`, first matching `from` wins.
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    /// `failover`: `(from region, to region)`.
    pub failover: Vec<(String, String)>,
    /// `failoverPriority`: endpoint labels compared in order (`key` or `key=value`).
    pub failover_priority: Vec<String>,
}

/// What locality does to one endpoint: its priority (0 first) and its locality weight
/// (`None`: no weight, balance by endpoint weight alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Envoy priority, compacted to 0..N.
    pub priority: u32,
    /// `distribute` weight of its locality, shared among the locality's endpoints.
    pub locality_weight: Option<u32>,
}

/// Places each endpoint for a caller at `client` with labels `client_labels`; `None` for an
/// endpoint `distribute` gives nothing. `failover_on`: the cluster has outlier detection
/// (istiod assigns failover priorities only then, otherwise nothing would ever fail over).
pub fn place<L: LabelLookup + ?Sized>(
    setting: &LocalitySetting,
    client: &Locality,
    client_labels: &std::collections::BTreeMap<String, String>,
    endpoints: &[(Locality, &L)],
    failover_on: bool,
) -> Vec<Option<Placement>> {
    if client.is_empty() {
        return vec![
            Some(Placement {
                priority: 0,
                locality_weight: None,
            });
            endpoints.len()
        ];
    }
    if let Some((_, to)) = setting
        .distribute
        .iter()
        .find(|(from, _)| client.matches(from))
    {
        return endpoints
            .iter()
            .map(|(loc, _)| {
                let (_, weight) = to.iter().find(|(pattern, _)| loc.matches(pattern))?;
                (*weight > 0).then_some(Placement {
                    priority: 0,
                    locality_weight: Some(*weight),
                })
            })
            .collect();
    }
    let raw: Vec<u32> = if !failover_on {
        vec![0; endpoints.len()]
    } else {
        endpoints
            .iter()
            .map(|(loc, labels)| {
                // `failoverPriority` replaces the region/zone ladder.
                if setting.failover_priority.is_empty() {
                    default_priority(setting, client, loc)
                } else {
                    label_priority(&setting.failover_priority, client_labels, *labels)
                }
            })
            .collect()
    };
    // Compact to 0..N, keeping the order.
    let mut levels = raw.clone();
    levels.sort_unstable();
    levels.dedup();
    raw.iter()
        .map(|p| {
            Some(Placement {
                priority: levels.iter().position(|l| l == p).unwrap_or(0) as u32,
                locality_weight: None,
            })
        })
        .collect()
}

/// Istio's default ladder: 0 same sub-zone, 1 same zone, 2 same region, 3 elsewhere, 4 other
/// regions that `failover` does not name for the caller's region.
fn default_priority(setting: &LocalitySetting, client: &Locality, ep: &Locality) -> u32 {
    if ep.region != client.region {
        let named: Vec<&str> = setting
            .failover
            .iter()
            .filter(|(from, _)| *from == client.region)
            .map(|(_, to)| to.as_str())
            .collect();
        return if named.is_empty() || named.contains(&ep.region.as_str()) {
            3
        } else {
            4
        };
    }
    if ep.zone != client.zone {
        2
    } else if ep.sub_zone != client.sub_zone {
        1
    } else {
        0
    }
}

/// `failoverPriority`: the number of labels, in order, on which the endpoint fails to match
/// before the first mismatch counts (label n counts only if labels 1..n−1 matched); 0 when
/// all match.
fn label_priority<L: LabelLookup + ?Sized>(
    keys: &[String],
    client: &std::collections::BTreeMap<String, String>,
    ep: &L,
) -> u32 {
    for (i, key) in keys.iter().enumerate() {
        let matched = match key.split_once('=') {
            Some((k, v)) => ep.label(k) == Some(v),
            None => client.label(key).is_some() && client.label(key) == ep.label(key),
        };
        if !matched {
            return (keys.len() - i) as u32;
        }
    }
    0
}

/// Envoy's overprovisioning factor: a priority at 1/1.4 ≈ 71 % health still takes all the
/// traffic.
pub const OVERPROVISIONING: f64 = 1.4;

/// The percentage of traffic each priority takes (summing to 100 when any host is healthy),
/// from its `(healthy, total)` hosts: each takes `min(100, 1.4 × healthy%)` of what is left,
/// and when the total health is under 100 % the loads are scaled up to 100 % (Envoy's
/// normalised total health).
pub fn priority_loads(health: &[(usize, usize)]) -> Vec<u32> {
    let availability: Vec<f64> = health
        .iter()
        .map(|&(healthy, total)| {
            if total == 0 {
                0.0
            } else {
                (OVERPROVISIONING * 100.0 * healthy as f64 / total as f64).min(100.0)
            }
        })
        .collect();
    let total: f64 = availability.iter().sum::<f64>().min(100.0);
    if total <= 0.0 {
        return vec![0; health.len()];
    }
    let mut left = 100.0_f64;
    let mut loads: Vec<u32> = availability
        .iter()
        .map(|a| {
            let share = (a * 100.0 / total).min(left);
            left -= share;
            share.round() as u32
        })
        .collect();
    // Rounding: give any remainder to the first priority with load.
    let sum: u32 = loads.iter().sum();
    if sum != 100
        && let Some(first) = loads.iter_mut().find(|l| **l > 0)
    {
        *first = (*first + 100).saturating_sub(sum);
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn eps(locs: &[&str]) -> Vec<Locality> {
        locs.iter().map(|l| Locality::parse(l)).collect()
    }

    fn place_simple(setting: &LocalitySetting, client: &str, locs: &[&str]) -> Vec<Option<u32>> {
        let none = BTreeMap::new();
        let e: Vec<(Locality, &BTreeMap<String, String>)> =
            eps(locs).into_iter().map(|l| (l, &none)).collect();
        place(setting, &Locality::parse(client), &none, &e, true)
            .into_iter()
            .map(|p| p.map(|p| p.priority))
            .collect()
    }

    #[test]
    fn the_default_ladder_is_zone_then_region_then_elsewhere_compacted() {
        let s = LocalitySetting::default();
        assert_eq!(
            place_simple(
                &s,
                "us-east/a/1",
                &["us-east/a/1", "us-east/a/2", "us-east/b/1", "eu-west/a/1"]
            ),
            [Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(
            place_simple(&s, "us-east/a", &["us-east/b", "eu-west/a"]),
            [Some(0), Some(1)],
            "compacted"
        );
    }

    #[test]
    fn failover_names_the_region_to_go_to_first() {
        let s = LocalitySetting {
            failover: vec![("us-east".into(), "eu-west".into())],
            ..Default::default()
        };
        assert_eq!(
            place_simple(&s, "us-east/a", &["us-east/a", "asia/a", "eu-west/a"]),
            [Some(0), Some(2), Some(1)]
        );
    }

    #[test]
    fn distribute_weights_localities_and_drops_the_unnamed() {
        let s = LocalitySetting {
            distribute: vec![(
                "us-east/*".into(),
                vec![
                    ("us-east/*".into(), 40),
                    ("eu-west/*".into(), 30),
                    ("asia-pacific/*".into(), 30),
                ],
            )],
            ..Default::default()
        };
        let none = BTreeMap::new();
        let e: Vec<(Locality, &BTreeMap<String, String>)> =
            eps(&["us-east/a", "eu-west/b", "asia-pacific/c", "africa/d"])
                .into_iter()
                .map(|l| (l, &none))
                .collect();
        let placed = place(&s, &Locality::parse("us-east/a"), &none, &e, false);
        let weights: Vec<Option<u32>> = placed
            .iter()
            .map(|p| p.and_then(|p| p.locality_weight))
            .collect();
        assert_eq!(weights, [Some(40), Some(30), Some(30), None]);
    }

    #[test]
    fn without_outlier_detection_or_a_client_locality_all_share_priority_zero() {
        let none = BTreeMap::new();
        let e: Vec<(Locality, &BTreeMap<String, String>)> = eps(&["us-east/a", "eu-west/a"])
            .into_iter()
            .map(|l| (l, &none))
            .collect();
        let s = LocalitySetting::default();
        for (client, failover_on) in [("us-east/a", false), ("", true)] {
            let p = place(&s, &Locality::parse(client), &none, &e, failover_on);
            assert!(p.iter().all(|p| p.is_some_and(|p| p.priority == 0)));
        }
    }

    #[test]
    fn failover_priority_labels_count_in_order() {
        let s = LocalitySetting {
            failover_priority: vec!["topology.istio.io/network".into(), "tier=gold".into()],
            ..Default::default()
        };
        let client: BTreeMap<String, String> =
            [("topology.istio.io/network".to_string(), "n1".to_string())].into();
        let gold_n1: BTreeMap<String, String> = [
            ("topology.istio.io/network".to_string(), "n1".to_string()),
            ("tier".to_string(), "gold".to_string()),
        ]
        .into();
        let n1: BTreeMap<String, String> =
            [("topology.istio.io/network".to_string(), "n1".to_string())].into();
        let n2: BTreeMap<String, String> = [
            ("topology.istio.io/network".to_string(), "n2".to_string()),
            ("tier".to_string(), "gold".to_string()),
        ]
        .into();
        let loc = Locality::parse("r/z");
        let e = vec![
            (loc.clone(), &n2),
            (loc.clone(), &n1),
            (loc.clone(), &gold_n1),
        ];
        let p: Vec<u32> = place(&s, &loc, &client, &e, true)
            .into_iter()
            .map(|p| p.map_or(99, |p| p.priority))
            .collect();
        assert_eq!(p, [2, 1, 0]);
    }

    #[test]
    fn priority_loads_spill_over_with_overprovisioning() {
        assert_eq!(priority_loads(&[(10, 10), (10, 10)]), [100, 0]);
        // 80 % healthy × 1.4 = 112 % ⇒ still all of it.
        assert_eq!(priority_loads(&[(8, 10), (10, 10)]), [100, 0]);
        // 50 % × 1.4 = 70 %: the rest spills to P1.
        assert_eq!(priority_loads(&[(5, 10), (10, 10)]), [70, 30]);
        assert_eq!(priority_loads(&[(0, 10), (10, 10)]), [0, 100]);
        // Total health under 100 %: normalised (35 % and 14 % become 71 % and 29 %).
        assert_eq!(priority_loads(&[(1, 4), (1, 10)]), [71, 29]);
        assert_eq!(priority_loads(&[(0, 3)]), [0]);
    }
}
