//! A test host in its own Linux network namespace, joined to the host by a
//! veth pair on a private /30. Cutting the host end's link partitions it.
//! Everything is removed on drop.

use std::process::Command;

use anyhow::{bail, Result};

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

impl NetNs {
    /// Create namespace number `n` (0..=255) of this process. Fails where
    /// `ip netns` is unavailable (not root, no iproute2): callers skip then.
    pub fn create(n: u8) -> Result<Self> {
        let tag = format!("{}x{n}", std::process::id() % 100_000);
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
