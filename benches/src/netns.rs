//! Pods as Linux network namespaces, for the tests of transparent capture and the benchmark's
//! `pods` scenario.
//!
//! A [`Node`] is the test's own little cluster network: a "node" namespace holding a bridge
//! (`10.241.<n>.1/24`), so nothing is added to the machine's own namespace or routes. Each
//! [`Pod`] is a namespace with loopback up and one veth (`eth0`, `10.241.<n>.<10+k>/24`)
//! whose other end joins the bridge, with a default route through it. Tests run processes
//! inside a namespace (`ip netns exec`, optionally under the proxy's uid and gid with
//! `setpriv`, creating no users) and open sockets there from this process
//! ([`Netns::connect`], [`Netns::bind`]: a short-lived thread enters the namespace, so the
//! test's own apps and clients live in the pods too).
//!
//! Every namespace is deleted when its handle drops, panicking tests included; namespaces
//! left by a test process that died (a SIGKILL skips Drop) carry its pid in their name and
//! are deleted by the next [`Node::create`].
//!
//! Needs root, `ip` (iproute2), `setpriv` (util-linux) and, for capture, `iptables` (Debian's
//! package, nft backend); [`missing_tools`] says what is absent so a test can skip.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Every namespace these tests make is named `<PREFIX><pid>-<n>-<role>`.
pub const PREFIX: &str = "mltest-";

/// The tools a namespace test needs, with the Debian package of each.
const TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
];

/// Namespaces made by this process so far (names stay unique across tests).
static MADE: AtomicU32 = AtomicU32::new(0);

/// Finds `program` on `PATH` or in the sbin directories.
pub fn find_tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// What keeps namespace tests from running here: not root, or a tool missing (with its
/// Debian package); empty when they can run.
pub fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| find_tool(t).is_none())
        .map(|(t, pkg)| format!("{t} (Debian's {pkg})"))
        .collect();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces and iptables need it)".into());
    }
    missing
}

/// For the tests that make pods: whether they can run here. When they cannot, says SKIPPED
/// with what `what` needs, or panics when `MESHLITE_REQUIRE_PEERS` is set (CI, where a
/// skipped test would hide a missing install step).
///
/// # Panics
/// When something is missing and `MESHLITE_REQUIRE_PEERS` is set.
#[allow(clippy::panic)]
pub fn can_run_tests(what: &str) -> bool {
    let missing = missing_tools();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("MESHLITE_REQUIRE_PEERS").is_some() {
        panic!("MESHLITE_REQUIRE_PEERS is set and these are missing: {missing:?}");
    }
    eprintln!("SKIPPED: {what} needs {missing:?}");
    false
}

/// Runs `ip ARGS` to completion, failing with its stderr.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()))
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes namespaces of ours whose test process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<PREFIX><pid>-<n>-<role>` with loopback up.
    fn create(role: &str) -> io::Result<Self> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command running `program ARGS` inside the namespace, as root.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()));
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args);
        c
    }

    /// A command running `program ARGS` inside the namespace as `uid`/`gid` (no
    /// supplementary groups), the way a sidecar container runs as 1337.
    pub fn command_as(&self, uid: u32, gid: u32, program: &Path, args: &[&str]) -> Command {
        let setpriv = find_tool("setpriv").unwrap_or_else(|| "setpriv".into());
        let mut c = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()));
        c.args(["netns", "exec", &self.name])
            .arg(setpriv)
            .args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
            ])
            .arg(program)
            .args(args);
        c
    }

    /// Runs `program ARGS` inside the namespace to completion (at most `within`).
    pub async fn run(&self, program: &Path, args: &[&str], within: Duration) -> io::Result<Output> {
        let mut c = tokio::process::Command::from(self.command(program, args));
        c.stdin(Stdio::null()).kill_on_drop(true);
        tokio::time::timeout(within, c.output())
            .await
            .map_err(|_| io::Error::other(format!("{} ran past {within:?}", program.display())))?
    }

    /// Spawns a long-running process (see [`Self::command`] and [`Self::command_as`]) whose
    /// stdout and stderr go to `log`; it is killed when the handle drops.
    pub fn spawn(&self, mut command: Command, log: &Path) -> io::Result<NsProcess> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(NsProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its file under `/var/run/netns` (what [`enter`] takes).
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it opens live there,
    /// and so do threads it starts), and waits for it.
    pub fn inside_blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let path = self.path();
        // A thread of its own: it never returns to a pool in another namespace.
        std::thread::spawn(move || {
            enter(&path)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live there.
    async fn inside<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let path = self.path();
        tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                enter(&path)?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
        })
        .await
        .map_err(io::Error::other)?
    }

    /// A UDP socket bound to `addr` inside the namespace (an app's resolver socket: the
    /// namespace's capture rules apply to what it sends).
    pub async fn udp(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let std = self
            .inside(move || {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
        tokio::net::UdpSocket::from_std(std)
    }

    /// A TCP connection to `addr` opened from inside the namespace (an app's outgoing
    /// connection: the namespace's capture rules apply to it).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let std = self
            .inside(move || {
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
        tokio::net::TcpStream::from_std(std)
    }

    /// A TCP listener bound to `addr` inside the namespace (an app's server).
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let std = self
            .inside(move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .await?;
        tokio::net::TcpListener::from_std(std)
    }
}

/// Moves the calling thread into the network namespace at `path` (a file under
/// `/var/run/netns`): the sockets it opens from now on, and the threads it starts, live there.
/// Only this thread moves (a network namespace is per thread), so call it on a thread of its
/// own.
pub fn enter(path: &Path) -> io::Result<()> {
    let ns = std::fs::File::open(path)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of every veth pair, and so the pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A process running in a namespace; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct NsProcess {
    child: Child,
    log: PathBuf,
}

impl NsProcess {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id (`ip netns exec` and `setpriv` exec the program: the program's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (SIGKILL: a crash, no drain) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's cluster network: a node namespace with a bridge the pods join.
#[derive(Debug)]
pub struct Node {
    /// The node namespace (the bridge `br0` and the pods' far veth ends live here).
    pub ns: Netns,
    subnet: u8,
    pods: AtomicU32,
}

impl Node {
    /// Creates the node namespace and its bridge, first deleting namespaces that earlier,
    /// killed test processes left behind.
    pub fn create() -> io::Result<Node> {
        remove_stale();
        let ns = Netns::create("node")?;
        // A /24 of 10.241.0.0/16 per node, so two tests never share addresses.
        let subnet = u8::try_from((std::process::id() + MADE.load(Ordering::Relaxed)) % 250)
            .unwrap_or(0)
            + 1;
        let node = Node {
            ns,
            subnet,
            pods: AtomicU32::new(0),
        };
        node.ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        let cidr = format!("{}/24", node.gateway());
        node.ns.ip(&["addr", "add", &cidr, "dev", "br0"])?;
        node.ns.ip(&["link", "set", "br0", "up"])?;
        Ok(node)
    }

    /// The bridge's address: the pods' default gateway, where node-level services (the
    /// control plane) listen.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 241, self.subnet, 1)
    }

    /// An address of the node's subnet that no pod has (a virtual IP for a service).
    pub fn virtual_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 241, self.subnet, 200u8.saturating_add(host % 50))
    }

    /// A new pod named `role`, joined to the bridge.
    pub fn add_pod(&self, role: &str) -> io::Result<Pod> {
        let k = self.pods.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(10 + k).map_err(|_| io::Error::other("too many pods"))?;
        let ip = Ipv4Addr::new(10, 241, self.subnet, host);
        let ns = Netns::create(role)?;
        let veth = format!("veth{k}");
        self.ns.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.ns.ip(&["link", "set", &veth, "master", "br0"])?;
        self.ns.ip(&["link", "set", &veth, "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        Ok(Pod { ns, ip })
    }
}

/// One pod: a namespace on the node's bridge.
#[derive(Debug)]
pub struct Pod {
    /// Its namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
}
