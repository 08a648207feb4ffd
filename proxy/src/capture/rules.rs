//! The redirect rules of transparent capture, as text for `iptables-restore`: what
//! `meshlite-proxy init` installs in a pod's network namespace, written the way Istio's
//! istio-init writes its own (nat table, chains of our own, jumps from PREROUTING and OUTPUT).
//!
//! - Inbound: TCP arriving at the pod goes to the inbound listener (15006), except the
//!   proxy's own ports and `--exclude-inbound-ports`; `--include-inbound-ports` narrows it
//!   (`*`, the default, is every port).
//! - Outbound: TCP the app sends goes to the outbound listener (15001), except traffic of the
//!   proxy's own uid and gid (its upstream connections), loopback destinations,
//!   `--exclude-outbound-ports` and `--exclude-outbound-ip-ranges`; `--include-outbound-ip-ranges`
//!   narrows it (`*`, the default, is every destination). As in Istio, the proxy's own
//!   connections to its pod's address (which leave through `lo`) go to the inbound listener.
//! - DNS (`--redirect-dns`): UDP and TCP port 53 from the app to the proxy's DNS port (15053).
//!
//! Everything here is a pure function of the settings and of what `iptables-save` says is
//! installed, so the text is tested without a network namespace. Installing flushes and
//! refills our chains and replaces our jumps in one `iptables-restore --noflush` transaction:
//! running it twice leaves one rule set, and a failure leaves the previous one.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

/// The uid and gid the proxy runs as (Istio's 1337): its traffic is never captured.
pub const PROXY_ID: u32 = 1337;
/// The inbound listener (Istio's port).
pub const INBOUND_PORT: u16 = 15006;
/// The outbound listener (Istio's port).
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy's DNS port (Istio's), where `--redirect-dns` sends port 53.
pub const DNS_PORT: u16 = 15053;
/// The proxy's own ports, never redirected inbound (Istio's set: admin, outbound, inbound,
/// merged metrics, health, DNS, Envoy's Prometheus port).
pub const PROXY_PORTS: [u16; 7] = [15000, 15001, 15006, 15020, 15021, 15053, 15090];

/// Every chain name of ours starts with this (cleanup removes what carries it).
pub const CHAIN_PREFIX: &str = "MESHLITE_";
const INBOUND: &str = "MESHLITE_INBOUND";
const IN_REDIRECT: &str = "MESHLITE_IN_REDIRECT";
const OUTPUT: &str = "MESHLITE_OUTPUT";
const REDIRECT: &str = "MESHLITE_REDIRECT";
/// Our chains, in the order they are declared.
const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];
/// The nat table's built-in chains, where our jumps live.
const BUILTIN: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

/// Why a flag value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    /// Not an address or `address/prefix`.
    #[error("`{0}` is not an IP address or CIDR range")]
    Cidr(String),
    /// Not a port number.
    #[error("`{0}` is not a port number (1-65535)")]
    Port(String),
}

/// The IP version a rule set is for (`iptables` or `ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The loopback address as a rule writes it.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
}

/// An address range, `address/prefix` (a bare address is a range of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Its IP version.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = RulesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RulesError::Cidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A flag that takes `*` (everything) or a comma-separated list (empty: nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<T> {
    /// `*`.
    All,
    /// The listed values.
    Only(Vec<T>),
}

impl<T: FromStr<Err = RulesError>> Selection<T> {
    /// Reads `*` or a comma-separated list (spaces around items are ignored).
    pub fn parse(s: &str) -> Result<Self, RulesError> {
        if s.trim() == "*" {
            return Ok(Selection::All);
        }
        list(s).map(Selection::Only)
    }
}

/// A comma-separated list; empty items are skipped.
pub fn list<T: FromStr<Err = RulesError>>(s: &str) -> Result<Vec<T>, RulesError> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(T::from_str)
        .collect()
}

/// A port number, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(pub u16);

impl FromStr for Port {
    type Err = RulesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(Port)
            .ok_or_else(|| RulesError::Port(s.to_string()))
    }
}

/// What to capture: the flags of `meshlite-proxy init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The proxy's uid: its traffic is not captured.
    pub proxy_uid: u32,
    /// The proxy's gid: its traffic is not captured.
    pub proxy_gid: u32,
    /// Where inbound TCP is redirected.
    pub inbound_port: u16,
    /// Where outbound TCP is redirected.
    pub outbound_port: u16,
    /// Destinations whose outbound TCP is captured.
    pub include_outbound: Selection<Cidr>,
    /// Destinations never captured (they win over `include_outbound`).
    pub exclude_outbound: Vec<Cidr>,
    /// Destination ports never captured outbound.
    pub exclude_outbound_ports: Vec<Port>,
    /// Pod ports whose inbound TCP is captured.
    pub include_inbound_ports: Selection<Port>,
    /// Pod ports never captured inbound (the proxy's own never are).
    pub exclude_inbound_ports: Vec<Port>,
    /// Port 53 (UDP and TCP) from the app goes to the proxy's DNS port.
    pub redirect_dns: bool,
}

impl Default for CaptureSpec {
    /// Istio's defaults: everything captured both ways, DNS left alone.
    fn default() -> Self {
        Self {
            proxy_uid: PROXY_ID,
            proxy_gid: PROXY_ID,
            inbound_port: INBOUND_PORT,
            outbound_port: OUTBOUND_PORT,
            include_outbound: Selection::All,
            exclude_outbound: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Selection::All,
            exclude_inbound_ports: Vec::new(),
            redirect_dns: false,
        }
    }
}

/// What of ours `iptables-save -t nat` shows installed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Our chains (`MESHLITE_*`).
    pub chains: Vec<String>,
    /// Rules of built-in chains that jump to ours, as `-A CHAIN ...` lines.
    pub jumps: Vec<String>,
}

impl Installed {
    /// Reads the nat table of an `iptables-save` listing.
    pub fn parse(save: &str) -> Self {
        let mut out = Installed::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if name.starts_with(CHAIN_PREFIX) {
                    out.chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or("");
                let target = rule
                    .split_whitespace()
                    .skip_while(|w| *w != "-j" && *w != "--jump")
                    .nth(1)
                    .unwrap_or("");
                if BUILTIN.contains(&chain) && target.starts_with(CHAIN_PREFIX) {
                    out.jumps.push(line.to_string());
                }
            }
        }
        out
    }

    /// Whether nothing of ours is installed.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }

    /// `-D` lines removing our jumps.
    fn unjump(&self, out: &mut String) {
        for j in &self.jumps {
            if let Some(rest) = j.strip_prefix("-A ") {
                let _ = writeln!(out, "-D {rest}");
            }
        }
    }
}

impl CaptureSpec {
    /// The `iptables-restore --noflush` input that installs this spec for `family`, replacing
    /// whatever of ours `installed` lists (our chains are flushed by being declared again;
    /// our jumps are removed and added anew).
    pub fn install(&self, family: Family, installed: &Installed) -> String {
        let mut out = String::from("*nat\n");
        installed.unjump(&mut out);
        for chain in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let _ = writeln!(
            out,
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            out,
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        let inbound = self.inbound_rules(&mut out);
        self.output_rules(family, &mut out);
        // Our jumps go first in the built-in chains (`-I`): rules a container runtime put in
        // the namespace before us must not see the app's packets first. Docker's embedded DNS
        // is one: its `-d 127.0.0.11 -j DOCKER_OUTPUT` rewrites port 53 to a port of its
        // own, so an appended DNS jump would never match.
        if self.redirect_dns {
            let _ = writeln!(out, "-I OUTPUT 1 -p udp --dport 53 -j {OUTPUT}");
        }
        let _ = writeln!(out, "-I OUTPUT 1 -p tcp -j {OUTPUT}");
        if inbound {
            let _ = writeln!(out, "-I PREROUTING 1 -p tcp -j {INBOUND}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The ports never redirected inbound: the proxy's own, the listeners configured, and
    /// `--exclude-inbound-ports`.
    fn inbound_exclusions(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = PROXY_PORTS
            .iter()
            .copied()
            .chain([self.inbound_port, self.outbound_port])
            .chain(self.exclude_inbound_ports.iter().map(|p| p.0))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// MESHLITE_INBOUND's rules; whether any port is captured at all.
    fn inbound_rules(&self, out: &mut String) -> bool {
        let excluded = self.inbound_exclusions();
        match &self.include_inbound_ports {
            Selection::All => {
                for p in &excluded {
                    let _ = writeln!(out, "-A {INBOUND} -p tcp --dport {p} -j RETURN");
                }
                let _ = writeln!(out, "-A {INBOUND} -p tcp -j {IN_REDIRECT}");
                true
            }
            Selection::Only(ports) => {
                let mut any = false;
                let mut seen = Vec::new();
                for Port(p) in ports {
                    if excluded.contains(p) || seen.contains(p) {
                        continue;
                    }
                    seen.push(*p);
                    any = true;
                    let _ = writeln!(out, "-A {INBOUND} -p tcp --dport {p} -j {IN_REDIRECT}");
                }
                any
            }
        }
    }

    /// MESHLITE_OUTPUT's rules, in Istio's order: DNS first, then the proxy's own traffic
    /// (to its pod's address through `lo`: inbound; anything else: left alone), the app's
    /// loopback traffic, loopback, exclusions, inclusions.
    fn output_rules(&self, family: Family, out: &mut String) {
        let (uid, gid) = (self.proxy_uid, self.proxy_gid);
        let lo = family.loopback();
        if self.redirect_dns {
            for owner in [format!("--uid-owner {uid}"), format!("--gid-owner {gid}")] {
                let _ = writeln!(
                    out,
                    "-A {OUTPUT} -p udp --dport 53 -m owner {owner} -j RETURN"
                );
            }
            let _ = writeln!(
                out,
                "-A {OUTPUT} -p udp --dport 53 -j REDIRECT --to-ports {DNS_PORT}"
            );
        }
        for owner in ["uid", "gid"] {
            let id = if owner == "uid" { uid } else { gid };
            let _ = writeln!(
                out,
                "-A {OUTPUT} ! -d {lo} -o lo -p tcp -m owner --{owner}-owner {id} -j {IN_REDIRECT}"
            );
            let _ = writeln!(
                out,
                "-A {OUTPUT} -o lo -m owner ! --{owner}-owner {id} -j RETURN"
            );
            let _ = writeln!(out, "-A {OUTPUT} -m owner --{owner}-owner {id} -j RETURN");
        }
        if self.redirect_dns {
            let _ = writeln!(
                out,
                "-A {OUTPUT} ! -d {lo} -p tcp --dport 53 -j REDIRECT --to-ports {DNS_PORT}"
            );
        }
        let _ = writeln!(out, "-A {OUTPUT} -d {lo} -j RETURN");
        let mut ports: Vec<u16> = self.exclude_outbound_ports.iter().map(|p| p.0).collect();
        ports.sort_unstable();
        ports.dedup();
        for p in ports {
            let _ = writeln!(out, "-A {OUTPUT} -p tcp --dport {p} -j RETURN");
        }
        for c in self
            .exclude_outbound
            .iter()
            .filter(|c| c.family() == family)
        {
            let _ = writeln!(out, "-A {OUTPUT} -d {c} -j RETURN");
        }
        match &self.include_outbound {
            Selection::All => {
                let _ = writeln!(out, "-A {OUTPUT} -j {REDIRECT}");
            }
            Selection::Only(ranges) => {
                for c in ranges.iter().filter(|c| c.family() == family) {
                    let _ = writeln!(out, "-A {OUTPUT} -d {c} -j {REDIRECT}");
                }
            }
        }
    }
}

/// The `iptables-restore --noflush` input that removes everything of ours `installed` lists
/// (jumps first, then our chains emptied and deleted); `None` when there is nothing.
pub fn cleanup(installed: &Installed) -> Option<String> {
    if installed.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    installed.unjump(&mut out);
    for chain in &installed.chains {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &installed.chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with('-')).collect()
    }

    #[test]
    fn flags_are_read_as_istio_writes_them() {
        assert_eq!(Selection::<Cidr>::parse("*"), Ok(Selection::All));
        assert_eq!(Selection::<Cidr>::parse(""), Ok(Selection::Only(vec![])));
        assert_eq!(
            Selection::<Cidr>::parse("10.0.0.0/8, 192.168.1.1").map(|s| match s {
                Selection::Only(v) => v.iter().map(ToString::to_string).collect::<Vec<_>>(),
                Selection::All => vec![],
            }),
            Ok(vec!["10.0.0.0/8".to_string(), "192.168.1.1/32".to_string()])
        );
        assert_eq!(
            "fd00::/8".parse::<Cidr>().map(|c| c.family()),
            Ok(Family::V6)
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(RulesError::Cidr("10.0.0.0/33".into()))
        );
        assert_eq!(
            "example.com".parse::<Cidr>(),
            Err(RulesError::Cidr("example.com".into()))
        );
        assert_eq!(list::<Port>("22, 3306"), Ok(vec![Port(22), Port(3306)]));
        assert_eq!(list::<Port>("0"), Err(RulesError::Port("0".into())));
        assert_eq!(list::<Port>("70000"), Err(RulesError::Port("70000".into())));
    }

    #[test]
    fn the_default_captures_everything_but_the_proxy_and_loopback() {
        let text = CaptureSpec::default().install(Family::V4, &Installed::default());
        let r = rules(&text);
        assert_eq!(
            r,
            vec![
                "-A MESHLITE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A MESHLITE_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A MESHLITE_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp --dport 15001 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp --dport 15021 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp --dport 15053 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp --dport 15090 -j RETURN",
                "-A MESHLITE_INBOUND -p tcp -j MESHLITE_IN_REDIRECT",
                "-A MESHLITE_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MESHLITE_IN_REDIRECT",
                "-A MESHLITE_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
                "-A MESHLITE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A MESHLITE_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j MESHLITE_IN_REDIRECT",
                "-A MESHLITE_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
                "-A MESHLITE_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A MESHLITE_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A MESHLITE_OUTPUT -j MESHLITE_REDIRECT",
                "-I OUTPUT 1 -p tcp -j MESHLITE_OUTPUT",
                "-I PREROUTING 1 -p tcp -j MESHLITE_INBOUND",
            ]
        );
        // Our chains are declared (which flushes them under --noflush) and committed once.
        assert!(text.starts_with("*nat\n:MESHLITE_INBOUND - [0:0]\n"));
        assert!(text.ends_with("COMMIT\n"));
        assert_eq!(text.matches("COMMIT").count(), 1);
    }

    #[test]
    fn exclusions_come_before_inclusions_and_each_family_gets_its_ranges() {
        let spec = CaptureSpec {
            include_outbound: Selection::parse("10.96.0.0/12,fd00:10::/64").unwrap(),
            exclude_outbound: list("10.96.0.10,fd00:10::53").unwrap(),
            exclude_outbound_ports: list("3306,22,3306").unwrap(),
            include_inbound_ports: Selection::parse("9080,15021,9080").unwrap(),
            ..CaptureSpec::default()
        };
        let v4 = spec.install(Family::V4, &Installed::default());
        let r = rules(&v4);
        let at = |needle: &str| {
            r.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("missing {needle}:\n{v4}"))
        };
        let ports = at("-A MESHLITE_OUTPUT -p tcp --dport 22 -j RETURN");
        assert!(ports < at("-A MESHLITE_OUTPUT -p tcp --dport 3306 -j RETURN"));
        let ex = at("-A MESHLITE_OUTPUT -d 10.96.0.10/32 -j RETURN");
        let inc = at("-A MESHLITE_OUTPUT -d 10.96.0.0/12 -j MESHLITE_REDIRECT");
        assert!(ports < ex && ex < inc);
        assert!(
            !v4.contains("fd00"),
            "no IPv6 range in the IPv4 rules:\n{v4}"
        );
        assert!(
            !r.contains(&"-A MESHLITE_OUTPUT -j MESHLITE_REDIRECT"),
            "no catch-all"
        );
        assert_eq!(v4.matches("3306").count(), 1, "duplicates are dropped");
        // Inbound: only the listed port; the proxy's own health port stays out.
        assert!(r.contains(&"-A MESHLITE_INBOUND -p tcp --dport 9080 -j MESHLITE_IN_REDIRECT"));
        assert_eq!(v4.matches("--dport 9080").count(), 1);
        assert!(!v4.contains("--dport 15021"));

        let v6 = spec.install(Family::V6, &Installed::default());
        assert!(v6.contains("-A MESHLITE_OUTPUT -d ::1/128 -j RETURN"));
        assert!(v6.contains("-A MESHLITE_OUTPUT -d fd00:10::53/128 -j RETURN"));
        assert!(v6.contains("-A MESHLITE_OUTPUT -d fd00:10::/64 -j MESHLITE_REDIRECT"));
        assert!(!v6.contains("10.96"));
    }

    #[test]
    fn no_inbound_ports_means_no_prerouting_jump() {
        let spec = CaptureSpec {
            include_inbound_ports: Selection::Only(vec![]),
            include_outbound: Selection::Only(vec![]),
            ..CaptureSpec::default()
        };
        let text = spec.install(Family::V4, &Installed::default());
        assert!(!text.contains("PREROUTING"), "{text}");
        assert!(!text.contains("-j MESHLITE_REDIRECT"), "{text}");
    }

    #[test]
    fn excluded_inbound_ports_and_moved_listeners_are_returned() {
        let spec = CaptureSpec {
            exclude_inbound_ports: list("22").unwrap(),
            inbound_port: 16006,
            ..CaptureSpec::default()
        };
        let text = spec.install(Family::V4, &Installed::default());
        assert!(text.contains("-A MESHLITE_INBOUND -p tcp --dport 22 -j RETURN"));
        assert!(text.contains("-A MESHLITE_INBOUND -p tcp --dport 16006 -j RETURN"));
        assert!(text.contains("-A MESHLITE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"));
    }

    #[test]
    fn dns_from_the_app_goes_to_the_proxy_and_the_proxys_own_does_not() {
        let spec = CaptureSpec {
            redirect_dns: true,
            ..CaptureSpec::default()
        };
        let text = spec.install(Family::V4, &Installed::default());
        let r = rules(&text);
        let at = |needle: &str| r.iter().position(|l| *l == needle).unwrap();
        let own = at("-A MESHLITE_OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j RETURN");
        let app = at("-A MESHLITE_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053");
        assert!(own < app);
        let own_tcp = at("-A MESHLITE_OUTPUT -m owner --gid-owner 1337 -j RETURN");
        let tcp = at(
            "-A MESHLITE_OUTPUT ! -d 127.0.0.1/32 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
        );
        assert!(own_tcp < tcp);
        assert!(r.contains(&"-I OUTPUT 1 -p udp --dport 53 -j MESHLITE_OUTPUT"));
    }

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j MESHLITE_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MESHLITE_INBOUND - [0:0]
:MESHLITE_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j MESHLITE_INBOUND
-A OUTPUT -p tcp -j MESHLITE_OUTPUT
-A OUTPUT -p tcp -j MESHLITE_OUTPUT
-A OUTPUT -j KUBE-SERVICES
-A MESHLITE_OUTPUT -j MESHLITE_REDIRECT
COMMIT
";

    #[test]
    fn what_is_installed_is_read_from_the_nat_table_only() {
        let i = Installed::parse(SAVED);
        assert_eq!(i.chains, vec!["MESHLITE_INBOUND", "MESHLITE_OUTPUT"]);
        assert_eq!(
            i.jumps,
            vec![
                "-A PREROUTING -p tcp -j MESHLITE_INBOUND",
                "-A OUTPUT -p tcp -j MESHLITE_OUTPUT",
                "-A OUTPUT -p tcp -j MESHLITE_OUTPUT",
            ]
        );
        assert!(Installed::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").is_empty());
    }

    #[test]
    fn installing_again_replaces_every_jump_of_ours() {
        let text = CaptureSpec::default().install(Family::V4, &Installed::parse(SAVED));
        // Each jump found is deleted (twice for the duplicate), then added once.
        assert_eq!(
            text.matches("-D OUTPUT -p tcp -j MESHLITE_OUTPUT").count(),
            2
        );
        assert_eq!(
            text.matches("-D PREROUTING -p tcp -j MESHLITE_INBOUND")
                .count(),
            1
        );
        assert_eq!(
            text.matches("-I OUTPUT 1 -p tcp -j MESHLITE_OUTPUT")
                .count(),
            1
        );
        // Deletions come before the chains are declared again; others' rules are untouched.
        assert!(text.find("-D ").unwrap() < text.find(":MESHLITE_").unwrap());
        assert!(!text.contains("KUBE"));
    }

    #[test]
    fn cleanup_removes_exactly_what_is_ours() {
        let text = cleanup(&Installed::parse(SAVED)).unwrap();
        assert_eq!(
            rules(&text),
            vec![
                "-D PREROUTING -p tcp -j MESHLITE_INBOUND",
                "-D OUTPUT -p tcp -j MESHLITE_OUTPUT",
                "-D OUTPUT -p tcp -j MESHLITE_OUTPUT",
                "-F MESHLITE_INBOUND",
                "-F MESHLITE_OUTPUT",
                "-X MESHLITE_INBOUND",
                "-X MESHLITE_OUTPUT",
            ]
        );
        assert_eq!(cleanup(&Installed::default()), None);
    }
}
