//! `meshlite-proxy init`: installs (or removes) the capture rules of [`super::rules`] in the
//! current network namespace, as Istio's init container does, by running the system's
//! `iptables-save` and `iptables-restore` (and their IPv6 twins).
//!
//! Everything that can be checked is checked before anything changes: the tools are on the
//! path, and the process holds `CAP_NET_ADMIN`. Each family's rules go in one
//! `iptables-restore --noflush` transaction, so a refused rule set leaves the previous one; if
//! the IPv6 set is refused after the IPv4 one went in, the IPv4 one is removed again, so the
//! namespace never holds half a capture.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::{CaptureSpec, Family, Installed, cleanup};

/// The capability the rules need (`CAP_NET_ADMIN`, bit 12 of the capability sets).
const CAP_NET_ADMIN: u32 = 12;

/// Where Debian and most images put the iptables tools, searched after `PATH` (an init
/// container's `PATH` may leave out the sbin directories).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"];

/// Why the rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A tool is not installed.
    #[error(
        "`{0}` was not found on PATH or in /usr/sbin, /sbin: install the iptables package (nft backend)"
    )]
    MissingTool(&'static str),
    /// The process may not change the namespace's firewall.
    #[error(
        "this process lacks CAP_NET_ADMIN, needed to install iptables rules (run the init container with the NET_ADMIN and NET_RAW capabilities, or as root); nothing was changed"
    )]
    NoNetAdmin,
    /// A tool could not be run.
    #[error("running {tool}: {source}")]
    Run {
        /// The tool.
        tool: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// The IPv6 rules were refused after the IPv4 ones went in; the IPv4 ones were removed.
    #[error("IPv6 rules refused, IPv4 rules removed again: {0}")]
    RolledBack(Box<InitError>),
}

/// The tools of one IP version.
#[derive(Clone, Debug)]
struct Tools {
    family: Family,
    save: PathBuf,
    save_name: &'static str,
    restore: PathBuf,
    restore_name: &'static str,
}

/// Finds `name` on `PATH`, then in the usual sbin directories.
fn find(name: &'static str) -> Result<PathBuf, InitError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(InitError::MissingTool(name))
}

impl Tools {
    fn of(family: Family) -> Result<Self, InitError> {
        let (save_name, restore_name) = match family {
            Family::V4 => ("iptables-save", "iptables-restore"),
            Family::V6 => ("ip6tables-save", "ip6tables-restore"),
        };
        Ok(Self {
            family,
            save: find(save_name)?,
            save_name,
            restore: find(restore_name)?,
            restore_name,
        })
    }

    /// What of ours is installed now.
    fn installed(&self) -> Result<Installed, InitError> {
        let out = Command::new(&self.save)
            .args(["-t", "nat"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| InitError::Run {
                tool: self.save_name,
                source,
            })?;
        if !out.status.success() {
            return Err(InitError::Failed {
                tool: self.save_name,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Installed::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Applies `input` in one `--noflush` transaction.
    fn restore(&self, input: &str) -> Result<(), InitError> {
        let run = |source| InitError::Run {
            tool: self.restore_name,
            source,
        };
        let mut child = Command::new(&self.restore)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(run)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(run)?;
        }
        let out = child.wait_with_output().map_err(run)?;
        if !out.status.success() {
            return Err(InitError::Failed {
                tool: self.restore_name,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// Whether the capability sets in `/proc/self/status` text hold `CAP_NET_ADMIN` in the
/// effective set.
pub fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Whether the kernel has IPv6 in this namespace (its rules are then installed too).
fn ipv6_enabled() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// The families to handle, with their tools, after the checks that need no change.
fn preflight() -> Result<Vec<Tools>, InitError> {
    let mut tools = vec![Tools::of(Family::V4)?];
    if ipv6_enabled() {
        tools.push(Tools::of(Family::V6)?);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !has_net_admin(&status) {
        return Err(InitError::NoNetAdmin);
    }
    Ok(tools)
}

/// What one run did, for the command's output.
#[derive(Debug, Default)]
pub struct Applied {
    /// The families whose rules were installed or removed.
    pub families: Vec<Family>,
}

/// Installs `spec` for IPv4 and, when the namespace has it, IPv6.
pub fn install(spec: &CaptureSpec) -> Result<Applied, InitError> {
    let tools = preflight()?;
    let mut done: Vec<&Tools> = Vec::new();
    for t in &tools {
        let attempt = t
            .installed()
            .and_then(|installed| t.restore(&spec.install(t.family, &installed)));
        if let Err(e) = attempt {
            if done.is_empty() {
                return Err(e);
            }
            for d in &done {
                if let Ok(installed) = d.installed()
                    && let Some(input) = cleanup(&installed)
                {
                    let _ = d.restore(&input);
                }
            }
            return Err(InitError::RolledBack(Box::new(e)));
        }
        done.push(t);
    }
    Ok(Applied {
        families: tools.iter().map(|t| t.family).collect(),
    })
}

/// Removes every chain and jump of ours, in both families.
pub fn remove() -> Result<Applied, InitError> {
    let tools = preflight()?;
    for t in &tools {
        if let Some(input) = cleanup(&t.installed()?) {
            t.restore(&input)?;
        }
    }
    Ok(Applied {
        families: tools.iter().map(|t| t.family).collect(),
    })
}

/// The restore input `install` would apply to a namespace holding nothing of ours, both
/// families, with a comment line naming each.
pub fn dry_run(spec: &CaptureSpec) -> String {
    let mut out = String::new();
    for (family, tool) in [
        (Family::V4, "iptables-restore"),
        (Family::V6, "ip6tables-restore"),
    ] {
        out.push_str(&format!("# {tool} --noflush\n"));
        out.push_str(&spec.install(family, &Installed::default()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_read_from_the_effective_set() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(has_net_admin(root));
        // CAP_NET_ADMIN alone (bit 12), as an init container granted NET_ADMIN has it.
        assert!(has_net_admin("CapEff:\t0000000000001000\n"));
        // Only CAP_NET_RAW (bit 13).
        assert!(!has_net_admin("CapEff:\t0000000000002000\n"));
        assert!(!has_net_admin("CapEff:\tzz\n"));
        assert!(!has_net_admin(""));
    }

    #[test]
    fn a_dry_run_prints_both_families() {
        let text = dry_run(&CaptureSpec::default());
        assert!(text.contains("# iptables-restore --noflush\n*nat\n"));
        assert!(text.contains("# ip6tables-restore --noflush\n*nat\n"));
        assert!(text.contains("-d ::1/128 -j RETURN"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }
}
