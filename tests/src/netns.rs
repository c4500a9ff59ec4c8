//! A test host in its own Linux network namespace, joined to the host by a
//! veth pair on a private /30. Cutting the host end's link partitions it;
//! nftables rules inside the namespace cut one direction only. Everything
//! is removed on drop.

use std::process::Command;

use anyhow::{bail, Result};

/// Which way traffic is dropped by [`NetNs::cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the namespace to the host (a worker inside is not heard).
    ToHost,
    /// From the host to the namespace (a worker inside hears nothing).
    FromHost,
}

/// A namespace with a veth link to the host.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Remove namespace number `n` of test processes that died without
/// cleaning up (killed runs): their host address would route this test's
/// packets to a dead link.
fn remove_stale(n: u8) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(tag) = name.strip_prefix("orch-t") else {
            continue;
        };
        let Some((pid, k)) = tag.split_once('x') else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if k == n.to_string() && !alive {
            let _ = ip(&["link", "del", &format!("oh{tag}")]);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl NetNs {
    /// Create namespace number `n` (0..=255) of this process. Fails where
    /// `ip netns` is unavailable (not root, no iproute2): callers skip then.
    pub fn create(n: u8) -> Result<Self> {
        remove_stale(n);
        let tag = format!("{}x{n}", std::process::id());
        let ns = NetNs {
            name: format!("orch-t{tag}"),
            host_if: format!("oh{tag}"),
            host_ip: format!("10.213.{n}.1"),
            ns_ip: format!("10.213.{n}.2"),
        };
        let ns_if = format!("on{tag}");
        ip(&["netns", "add", &ns.name])?;
        let setup = || -> Result<()> {
            ip(&[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &ns.name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ])?;
            ip(&["link", "set", &ns.host_if, "up"])?;
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ns_ip),
                "dev",
                &ns_if,
            ])?;
            ip(&["-n", &ns.name, "link", "set", &ns_if, "up"])?;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
            Ok(())
        };
        // On a setup failure `ns` is dropped here, which removes what was made.
        setup()?;
        Ok(ns)
    }

    /// Bring the host end of the link down (partition) or up (heal).
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }

    /// Drop every packet one way between the host end and the namespace
    /// (nftables, inside the namespace); [`NetNs::heal`] removes it.
    pub fn cut(&self, dir: Direction) -> Result<()> {
        let (hook, field) = match dir {
            Direction::ToHost => ("output", "daddr"),
            Direction::FromHost => ("input", "saddr"),
        };
        let rules = format!(
            "table inet orch_cut {{\n chain c {{\n  type filter hook {hook} priority 0; policy accept;\n  ip {field} {} drop\n }}\n}}\n",
            self.host_ip
        );
        self.nft(&["-f", "-"], Some(&rules))
    }

    /// Remove what [`NetNs::cut`] added.
    pub fn heal(&self) -> Result<()> {
        self.nft(&["delete", "table", "inet", "orch_cut"], None)
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`nft {}` in `{}` failed: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Why one-way cuts cannot be made here (no nftables), if they cannot.
    pub fn nft_unavailable() -> Option<String> {
        match Command::new("nft").arg("--version").output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("`nft` cannot run: {e}")),
        }
    }

    /// Why namespaces cannot be used here, if they cannot.
    pub fn unavailable() -> Option<String> {
        match NetNs::create(250) {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
