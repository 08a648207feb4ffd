//! The endpoints a cluster balances over at one moment: its hosts placed by priority
//! (locality failover) and weight, less those outlier detection ejected, each priority level
//! with its own balancer, and slow start's weight shares while new hosts warm up.

use std::collections::{BTreeMap, HashMap};

use crate::balance::locality::{Locality, LocalitySetting, Placement};
use crate::balance::slow_start::SlowStart;

/// The endpoints a cluster balances over at one moment: by priority (locality failover;
/// one level without it), each level with its balancer and its share of traffic.
#[derive(Debug)]
pub struct HostSet {
    /// The hosts outlier detection allowed when this was built.
    allowed: Vec<usize>,
    levels: Vec<Level>,
    /// Cumulative traffic percentages of the levels (the last is 100 when any host is up).
    cumulative: Vec<u32>,
    /// `(healthy, total)` hosts of each level, to recompute the loads without some levels.
    health: Vec<(usize, usize)>,
}

/// One priority level of a [`HostSet`].
#[derive(Debug)]
pub struct Level {
    /// Indices into the cluster's `endpoints`, in order.
    members: Vec<usize>,
    /// `None` when `members` is empty.
    balancer: Option<crate::balance::Balancer>,
}

impl Level {
    /// Indices into the cluster's endpoints of this level's hosts; the balancer's index `i`
    /// is `members()[i]`.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The level's balancer; `None` when it has no host.
    pub fn balancer(&self) -> Option<&crate::balance::Balancer> {
        self.balancer.as_ref()
    }
}

/// What placing an endpoint needs to know of it.
#[derive(Debug, Clone, Copy)]
pub struct PlacedEndpoint<'a> {
    /// Its workload's locality.
    pub locality: &'a Locality,
    /// Its workload's labels (`failoverPriority` compares them).
    pub labels: &'a crate::source::labels::Labels,
    /// Its load-balancing weight from the registry.
    pub weight: u32,
}

/// How a cluster places its endpoints: priority and weight of each (`None`: never used,
/// e.g. a locality `distribute` leaves out).
#[derive(Debug, Clone)]
pub struct Placements(Vec<Option<(Placement, u32)>>);

impl Placements {
    /// The priority (locality level) endpoint `index` is placed at; `None` when unused.
    pub fn priority(&self, index: usize) -> Option<u32> {
        self.0
            .get(index)
            .copied()
            .flatten()
            .map(|(p, _)| p.priority)
    }

    /// Every endpoint at priority 0 with its own weight.
    pub fn flat(endpoints: &[PlacedEndpoint<'_>]) -> Self {
        Self(
            endpoints
                .iter()
                .map(|e| {
                    Some((
                        Placement {
                            priority: 0,
                            locality_weight: None,
                        },
                        e.weight.max(1),
                    ))
                })
                .collect(),
        )
    }

    /// Places `endpoints` for the caller `local` under `setting`; a `distribute` weight is
    /// shared among the endpoints of its locality (Envoy picks the locality by weight, then a
    /// host in it; spreading the weight over the hosts gives the same shares).
    pub fn located(
        setting: &LocalitySetting,
        local: (&Locality, &BTreeMap<String, String>),
        endpoints: &[PlacedEndpoint<'_>],
        failover_on: bool,
    ) -> Self {
        let view: Vec<(Locality, &crate::source::labels::Labels)> = endpoints
            .iter()
            .map(|e| (e.locality.clone(), e.labels))
            .collect();
        let placed = crate::balance::locality::place(setting, local.0, local.1, &view, failover_on);
        let mut per_locality: HashMap<&Locality, u32> = HashMap::new();
        for (p, e) in placed.iter().zip(endpoints) {
            if p.is_some_and(|p| p.locality_weight.is_some()) {
                *per_locality.entry(e.locality).or_default() += 1;
            }
        }
        Self(
            placed
                .iter()
                .zip(endpoints)
                .map(|(p, e)| {
                    let p = (*p)?;
                    let weight = match p.locality_weight {
                        None => e.weight.max(1),
                        Some(w) => {
                            let n = per_locality.get(e.locality).copied().unwrap_or(1).max(1);
                            (w.saturating_mul(1000) / n)
                                .max(1)
                                .saturating_mul(e.weight.max(1))
                        }
                    };
                    Some((p, weight))
                })
                .collect(),
        )
    }
}

impl HostSet {
    /// A set with no host to balance over (every pick finds none: 503 `UH`).
    pub fn empty() -> Self {
        Self {
            allowed: Vec::new(),
            levels: Vec::new(),
            cumulative: Vec::new(),
            health: Vec::new(),
        }
    }

    /// The hosts outlier detection allowed when this set was built.
    pub fn allowed(&self) -> &[usize] {
        &self.allowed
    }

    /// Builds the levels over `members` (the hosts outlier detection allows) of the
    /// endpoints whose host keys (addresses, which ring hash and Maglev hash) are `keys`;
    /// `warming` scales each endpoint's weight by its slow-start share, in thousandths
    /// (`None` for a host at full weight).
    pub fn build(
        policy: crate::balance::Policy,
        keys: &[&str],
        placements: &Placements,
        members: &[usize],
        warming: Option<&[Option<u32>]>,
    ) -> Result<Self, crate::balance::BalanceError> {
        let depth = placements
            .0
            .iter()
            .flatten()
            .map(|(p, _)| p.priority + 1)
            .max()
            .unwrap_or(1) as usize;
        let mut health = vec![(0usize, 0usize); depth];
        for (p, _) in placements.0.iter().flatten() {
            health[p.priority as usize].1 += 1;
        }
        let mut by_level: Vec<Vec<usize>> = vec![Vec::new(); depth];
        for &m in members {
            if let Some(Some((p, _))) = placements.0.get(m) {
                by_level[p.priority as usize].push(m);
                health[p.priority as usize].0 += 1;
            }
        }
        let loads = crate::balance::locality::priority_loads(&health);
        let mut cumulative = Vec::with_capacity(depth);
        let mut sum = 0;
        for l in &loads {
            sum += l;
            cumulative.push(sum);
        }
        let levels = by_level
            .into_iter()
            .map(|members| {
                // Weights as u64 (a slow-start share multiplies them by up to 1000), brought
                // back into u32 by one common shift, which keeps their ratios.
                let weights: Vec<u64> = members
                    .iter()
                    .map(|&i| {
                        let weight = placements.0.get(i).copied().flatten().map_or(1, |p| p.1);
                        let share =
                            warming.map_or(1, |w| w.get(i).copied().flatten().unwrap_or(1000));
                        u64::from(weight) * u64::from(share)
                    })
                    .collect();
                let top = weights.iter().copied().max().unwrap_or(1);
                let shift = (64 - top.leading_zeros()).saturating_sub(32);
                let keys: Vec<crate::balance::Endpoint<'_>> = members
                    .iter()
                    .zip(&weights)
                    .filter_map(|(&i, &w)| {
                        let weight = u32::try_from(w >> shift).unwrap_or(u32::MAX).max(1);
                        keys.get(i)
                            .map(|k| crate::balance::Endpoint::new(k, weight))
                    })
                    .collect();
                let balancer = if keys.is_empty() {
                    None
                } else {
                    Some(crate::balance::Balancer::new(
                        policy,
                        &keys,
                        &mut crate::balance::ThreadRandom,
                    )?)
                };
                Ok(Level { members, balancer })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed: members.to_vec(),
            levels,
            cumulative,
            health,
        })
    }

    /// The level a retry goes to when the levels `tried` were attempted already (Envoy's
    /// previous-priorities retry priority): they count as unhealthy, so their load spills to
    /// the others by the usual rule; when that leaves no level, none is excluded.
    pub fn level_excluding(&self, hash: Option<u64>, tried: &[u32]) -> Option<&Level> {
        if tried.is_empty() || self.levels.len() == 1 {
            return self.level(hash);
        }
        let health: Vec<(usize, usize)> = self
            .health
            .iter()
            .enumerate()
            .map(|(i, &(healthy, total))| {
                let excluded = u32::try_from(i).is_ok_and(|i| tried.contains(&i));
                (if excluded { 0 } else { healthy }, total)
            })
            .collect();
        let loads = crate::balance::locality::priority_loads(&health);
        if loads.iter().all(|l| *l == 0) {
            return self.level(hash);
        }
        let roll = level_roll(hash);
        let mut sum = 0;
        let i = loads.iter().position(|l| {
            sum += l;
            roll < sum
        })?;
        self.levels.get(i)
    }

    /// The level a request goes to: by its hash when it has one (so consistent hashing
    /// stays consistent), else at random, in proportion to the levels' loads.
    pub fn level(&self, hash: Option<u64>) -> Option<&Level> {
        if self.levels.len() == 1 {
            return self.levels.first();
        }
        let roll = level_roll(hash);
        let i = self.cumulative.iter().position(|c| roll < *c)?;
        self.levels.get(i)
    }
}

/// Where in 0..100 a request falls among priority loads: by its hash when it has one (so
/// consistent hashing stays consistent), else at random.
fn level_roll(hash: Option<u64>) -> u32 {
    match hash {
        Some(h) => (h % 100) as u32,
        None => fastrand::u32(..100),
    }
}

/// Each endpoint's slow-start share at `now`, in thousandths (`None`: full weight), given
/// when each joined; `None` when no endpoint warms.
pub fn warming_shares(
    slow_start: Option<&SlowStart>,
    joined: &[Option<tokio::time::Instant>],
    now: tokio::time::Instant,
) -> Option<Vec<Option<u32>>> {
    let s = slow_start?;
    let shares: Vec<Option<u32>> = joined
        .iter()
        .map(|j| j.and_then(|at| s.permille(now.saturating_duration_since(at))))
        .collect();
    shares.iter().any(Option::is_some).then_some(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_to_a_priority_level_in_proportion_to_its_load() {
        let set = HostSet {
            allowed: vec![0, 1],
            levels: vec![
                Level {
                    members: vec![0],
                    balancer: None,
                },
                Level {
                    members: vec![1],
                    balancer: None,
                },
            ],
            cumulative: vec![70, 100],
            health: vec![(1, 1), (1, 1)],
        };
        let first = |h: u64| set.level(Some(h)).map(|l| l.members[0]);
        assert_eq!(first(69), Some(0));
        assert_eq!(first(70), Some(1));
        assert_eq!(first(199), Some(1), "hash modulo 100");
        let to_first = (0..10_000)
            .filter(|_| set.level(None).is_some_and(|l| l.members[0] == 0))
            .count();
        assert!((6_500..7_500).contains(&to_first), "{to_first}");
    }

    #[test]
    fn a_retry_leaving_tried_priorities_goes_to_the_others_and_to_all_when_none_is_left() {
        let level = |m| Level {
            members: vec![m],
            balancer: None,
        };
        let set = HostSet {
            allowed: vec![0, 1, 2],
            levels: vec![level(0), level(1), level(2)],
            cumulative: vec![100, 100, 100],
            health: vec![(1, 1), (1, 1), (1, 1)],
        };
        let first =
            |tried: &[u32], h: u64| set.level_excluding(Some(h), tried).map(|l| l.members[0]);
        for h in [0, 42, 99] {
            assert_eq!(first(&[], h), Some(0), "all traffic to the first priority");
            assert_eq!(first(&[0], h), Some(1), "the next priority takes it all");
            assert_eq!(first(&[0, 1], h), Some(2));
            assert_eq!(
                first(&[0, 1, 2], h),
                Some(0),
                "every level tried: none excluded"
            );
        }
    }
}
