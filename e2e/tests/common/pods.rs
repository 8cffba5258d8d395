//! Pods on one host: each a network namespace with one address on a shared bridge,
//! as a CNI gives a Kubernetes Pod. Processes run inside with `ip netns exec`
//! (optionally as another UID, with `setpriv`), so a test can install real iptables
//! capture rules in a Pod without touching the host's.
//!
//! Everything made here is named `ort13c-…` on 10.213.0.0/24, and removed when the
//! last [`Pod`] (and so the [`Network`]) is dropped, panics included; leftovers of a
//! run that was killed are removed when the next one starts.

use outrider_testkit::Proc;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Every namespace and link name starts with this.
pub const PREFIX: &str = "ort13c-";
const BRIDGE: &str = "ort13c-br0";
/// The bridge's own address: the host as Pods see it (a control plane listens here).
pub const GATEWAY: &str = "10.213.0.1";
const SUBNET_PREFIX: &str = "10.213.0";

/// Why Pods cannot be made here, or `None` when they can: root and the programs.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            })
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some("not root: network namespaces and iptables need it".into());
    }
    for program in ["ip", "iptables", "iptables-save", "setpriv", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("{program} is not installed"));
        }
    }
    None
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs `ip` and panics with its message when it fails.
fn ip(args: &[&str]) {
    let out = run("ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bridge every Pod's veth is plugged into. Shared by the Pods alive at one time.
pub struct Network {
    next_host: AtomicU8,
}

static NETWORK: Mutex<Weak<Network>> = Mutex::new(Weak::new());

impl Network {
    /// The network the live Pods are on, or a new one.
    pub fn shared() -> Arc<Network> {
        let mut current = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(net) = current.upgrade() {
            return net;
        }
        remove_leftovers();
        ip(&["link", "add", BRIDGE, "type", "bridge"]);
        ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE]);
        ip(&["link", "set", BRIDGE, "up"]);
        let net = Arc::new(Network {
            next_host: AtomicU8::new(10),
        });
        *current = Arc::downgrade(&net);
        net
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", BRIDGE]);
    }
}

/// Namespaces and links of ours that a killed run left behind (only ours: the prefix).
fn remove_leftovers() {
    let listed = run("ip", &["netns", "list"]);
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    // A namespace outlives its name while the kernel still holds sockets of it
    // (orphaned connections of killed processes), and its veth with it.
    let links = run("ip", &["-o", "link", "show"]);
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line.split(": ").nth(1).unwrap_or("");
        let name = name.split('@').next().unwrap_or("");
        if name.starts_with(PREFIX) {
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

/// One Pod: a network namespace with loopback and `eth0` (its address on the
/// bridge, a default route through [`GATEWAY`]).
pub struct Pod {
    pub name: String,
    pub ip: String,
    ns: String,
    /// The host's end of the Pod's veth.
    veth: String,
    // Dropped after the namespace, so the bridge outlives every Pod on it.
    _network: Arc<Network>,
}

impl Pod {
    pub fn new(network: &Arc<Network>, name: &str) -> Pod {
        let host = network.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(host < 250, "out of Pod addresses");
        let ns = format!("{PREFIX}{name}");
        let veth = format!("{PREFIX}v{host}");
        let ip_addr = format!("{SUBNET_PREFIX}.{host}");
        ip(&["netns", "add", &ns]);
        let pod = Pod {
            name: name.to_owned(),
            ip: ip_addr.clone(),
            ns: ns.clone(),
            veth: veth.clone(),
            _network: Arc::clone(network),
        };
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &veth, "master", BRIDGE, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", GATEWAY]);
        pod
    }

    fn command(&self, uid: Option<u32>, program: &str, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = vec!["netns".into(), "exec".into(), self.ns.clone()];
        if let Some(uid) = uid {
            all.extend(
                [
                    "setpriv",
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                ]
                .map(String::from),
            );
        }
        all.push(program.to_owned());
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// Runs `program` inside the Pod (as root) and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let all = self.command(None, program, args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run("ip", &all)
    }

    /// Starts `program` inside the Pod, as `uid` (root when `None`); killed when the
    /// [`Proc`] is dropped (`ip netns exec` and `setpriv` exec it, so the PID is its own).
    pub fn spawn(&self, uid: Option<u32>, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let all = self.command(uid, &program.display().to_string(), args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Proc::spawn("ip", &all, envs)
    }

    /// `curl` from inside the Pod: the status (0 when no HTTP answer came) and the
    /// response, head included.
    pub fn curl(&self, url: &str, extra: &[&str]) -> (u16, String) {
        let mut args = vec!["-s", "-i", "--max-time", "5", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        args.push(url);
        let out = self.exec("curl", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (response, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), response.to_owned())
    }

    /// Opens a TCP connection from inside the Pod to `addr` (`ip:port`), sends
    /// `send` (nothing when empty) and returns what came back within a second.
    pub fn tcp(&self, addr: &str, send: &str) -> String {
        let (host, port) = addr.rsplit_once(':').expect("ip:port");
        // bash's /dev/tcp: no client program needed in the Pod.
        let script =
            format!("exec 3<>/dev/tcp/{host}/{port} || exit 1; printf %s \"$1\" >&3; timeout 1 cat <&3; exit 0");
        let out = self.exec("bash", &["-c", &script, "tcp", send]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The nat table as `iptables-save` prints it, without its timestamp comments.
    pub fn nat_rules(&self) -> String {
        let out = self.exec("iptables-save", &["-t", "nat"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Pod {
    /// Packets counted by the nat rules whose `-A …` line starts with `rule`: in the
    /// nat table only a connection's first packet is seen, so this counts the
    /// connections the rule matched.
    pub fn nat_packets(&self, rule: &str) -> u64 {
        let out = self.exec("iptables-save", &["-c", "-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (counters, line) = l.strip_prefix('[')?.split_once("] ")?;
                line.starts_with(rule)
                    .then(|| counters.split(':').next()?.parse::<u64>().ok())?
            })
            .sum()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The veth first: the namespace itself may linger while the kernel holds
        // sockets of it, and would keep the pair.
        let _ = run("ip", &["link", "del", &self.veth]);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}
