//! Traffic capture for a Pod: `outrider-sidecar init` writes the nat-table rules that
//! send the Pod's TCP traffic through the sidecar (`docs/reference.md`, "Traffic
//! capture").
//!
//! Everything lives in four chains of our own, so that the rules are one unit: a
//! re-run replaces them (declared, flushed, refilled in one `iptables-restore`
//! transaction, the old jumps into them deleted in the same transaction), and
//! `--uninstall` removes exactly them and the jumps into them, nothing else.
//!
//! - `PREROUTING` → `OUTRIDER_INBOUND`: the sidecar's own ports and
//!   `--exclude-inbound-ports` return; the captured ports (every other one by default)
//!   go to `OUTRIDER_IN_REDIRECT`, which redirects to the inbound port.
//! - `OUTPUT` → `OUTRIDER_OUTPUT`: the proxy's UID (its own calls, its control
//!   stream), loopback, `--exclude-outbound-ports` and `--exclude-outbound-cidrs`
//!   return; the rest goes to `OUTRIDER_REDIRECT`, which redirects to the outbound port.
//!
//! Rule generation ([`install_script`], [`uninstall_script`]) is pure: it takes what
//! `iptables-save` printed and returns what `iptables-restore` is fed. [`Iptables`] is
//! the thin edge that runs the programs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The ports the sidecar itself listens on: admin, outbound, inbound, health. Never
/// captured inbound, whatever the flags say.
pub const SIDECAR_PORTS: [u16; 4] = [15000, 15001, 15006, 15020];

/// Our chains in the nat table. A jump into any of them from elsewhere is ours.
pub const INBOUND_CHAIN: &str = "OUTRIDER_INBOUND";
pub const IN_REDIRECT_CHAIN: &str = "OUTRIDER_IN_REDIRECT";
pub const OUTPUT_CHAIN: &str = "OUTRIDER_OUTPUT";
pub const REDIRECT_CHAIN: &str = "OUTRIDER_REDIRECT";
const CHAINS: [&str; 4] = [INBOUND_CHAIN, IN_REDIRECT_CHAIN, OUTPUT_CHAIN, REDIRECT_CHAIN];

/// `outrider-sidecar init`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The UID the sidecar runs as: its own traffic is never captured (no loop).
    #[arg(long)]
    pub proxy_uid: u32,
    /// Inbound ports to capture (comma-separated); default, or `*`: every port but the
    /// sidecar's own.
    #[arg(long, default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports never captured (with the default `--inbound-ports`).
    #[arg(long, default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never captured.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destinations never captured: addresses or CIDRs (IPv4 and IPv6).
    #[arg(long, default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// The sidecar's inbound port, where captured inbound connections go.
    #[arg(long, default_value_t = 15006)]
    pub proxy_inbound_port: u16,
    /// The sidecar's outbound port, where captured outbound connections go.
    #[arg(long, default_value_t = 15001)]
    pub proxy_outbound_port: u16,
    /// Print the rules (iptables-restore input) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules (and only them).
    #[arg(long)]
    pub uninstall: bool,
    /// Which iptables to run: `auto` (what `iptables` is: nf_tables or legacy),
    /// `nft` or `legacy`.
    #[arg(long, env = "OUTRIDER_IPTABLES", value_enum, default_value_t = BackendChoice::Auto)]
    pub iptables: BackendChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Nft,
    Legacy,
}

/// Which rules to write, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub proxy_uid: u32,
    /// `None`: every port but the sidecar's own and the excluded ones.
    pub inbound_ports: Option<Vec<u16>>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    pub proxy_inbound_port: u16,
    pub proxy_outbound_port: u16,
}

/// An address range: an address and a prefix length valid for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }
}

/// An IP family: which program (`iptables` or `ip6tables`) and which CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A flag's value that is not what it should be: names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

fn flag_error(flag: &'static str, reason: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        reason: reason.into(),
    }
}

fn list<T: std::str::FromStr>(flag: &'static str, value: &str, what: &str) -> Result<Vec<T>, FlagError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| flag_error(flag, format!("{s:?} is not {what}"))))
        .collect()
}

fn ports(flag: &'static str, value: &str) -> Result<Vec<u16>, FlagError> {
    let mut ports: Vec<u16> = list(flag, value, "a port (1-65535)")?;
    if ports.contains(&0) {
        return Err(flag_error(flag, "0 is not a port (1-65535)"));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

impl Capture {
    pub fn from_args(args: &InitArgs) -> Result<Self, FlagError> {
        let inbound_ports = match args.inbound_ports.trim() {
            "*" | "" => None,
            listed => Some(ports("inbound-ports", listed)?),
        };
        let capture = Capture {
            proxy_uid: args.proxy_uid,
            inbound_ports,
            exclude_inbound_ports: ports("exclude-inbound-ports", &args.exclude_inbound_ports)?,
            exclude_outbound_ports: ports("exclude-outbound-ports", &args.exclude_outbound_ports)?,
            exclude_outbound_cidrs: args
                .exclude_outbound_cidrs
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().map_err(|e| flag_error("exclude-outbound-cidrs", e)))
                .collect::<Result<_, _>>()?,
            proxy_inbound_port: args.proxy_inbound_port,
            proxy_outbound_port: args.proxy_outbound_port,
        };
        for (flag, port) in [
            ("proxy-inbound-port", capture.proxy_inbound_port),
            ("proxy-outbound-port", capture.proxy_outbound_port),
        ] {
            if port == 0 {
                return Err(flag_error(flag, "0 is not a port (1-65535)"));
            }
        }
        if capture.proxy_inbound_port == capture.proxy_outbound_port {
            return Err(flag_error(
                "proxy-outbound-port",
                "must differ from --proxy-inbound-port",
            ));
        }
        if let Some(listed) = &capture.inbound_ports {
            if let Some(own) = listed.iter().find(|p| capture.own_ports().contains(p)) {
                // Capturing the inbound port itself would loop every connection.
                return Err(flag_error(
                    "inbound-ports",
                    format!("{own} is one of the sidecar's own ports"),
                ));
            }
        }
        Ok(capture)
    }

    /// The sidecar's ports, never captured inbound: the defaults and the ones given.
    fn own_ports(&self) -> Vec<u16> {
        let mut own = SIDECAR_PORTS.to_vec();
        own.extend([self.proxy_inbound_port, self.proxy_outbound_port]);
        own.sort_unstable();
        own.dedup();
        own
    }

    /// The `-A` lines of our chains for `family`, in order.
    pub fn rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        // Inbound (nat PREROUTING): what arrives from outside the Pod.
        r.push(format!("-A {INBOUND_CHAIN} -i lo -j RETURN"));
        match &self.inbound_ports {
            None => {
                let mut skip = self.own_ports();
                skip.extend(&self.exclude_inbound_ports);
                skip.sort_unstable();
                skip.dedup();
                for port in skip {
                    r.push(format!("-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN"));
                }
                r.push(format!("-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}"));
            }
            Some(listed) => {
                for port in listed.iter().filter(|p| !self.exclude_inbound_ports.contains(p)) {
                    r.push(format!(
                        "-A {INBOUND_CHAIN} -p tcp --dport {port} -j {IN_REDIRECT_CHAIN}"
                    ));
                }
            }
        }
        r.push(format!(
            "-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.proxy_inbound_port
        ));
        // Outbound (nat OUTPUT): what processes of the Pod send.
        r.push(format!(
            "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        ));
        r.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
        for port in &self.exclude_outbound_ports {
            r.push(format!("-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN"));
        }
        for cidr in self.exclude_outbound_cidrs.iter().filter(|c| c.family() == family) {
            r.push(format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"));
        }
        r.push(format!("-A {OUTPUT_CHAIN} -p tcp -j {REDIRECT_CHAIN}"));
        r.push(format!(
            "-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.proxy_outbound_port
        ));
        r
    }
}

impl Family {
    /// `iptables` or `ip6tables`.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl Cidr {
    fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// The jumps from the built-in chains into ours.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];

/// What of ours `iptables-save -t nat` shows: the chains, and every rule elsewhere
/// that jumps into one of them (as its `-A …` line).
#[derive(Debug, Default, PartialEq, Eq)]
struct Present {
    chains: Vec<&'static str>,
    jumps: Vec<String>,
}

fn present(saved: &str) -> Present {
    let mut found = Present::default();
    let mut in_nat = false;
    for line in saved.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if let Some(ours) = CHAINS.iter().find(|c| **c == name) {
                found.chains.push(ours);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or("");
            let target = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1).unwrap_or("");
            if !CHAINS.contains(&chain) && CHAINS.contains(&target) {
                found.jumps.push(line.to_owned());
            }
        }
    }
    found
}

/// The `iptables-restore --noflush` input that makes the nat table hold exactly our
/// rules for `family`, given what `iptables-save -t nat` printed (`""`: nothing of
/// ours, as for `--dry-run`). One transaction: it applies whole or not at all.
pub fn install_script(capture: &Capture, family: Family, saved: &str) -> String {
    let found = present(saved);
    let mut s = String::from("*nat\n");
    for chain in CHAINS {
        // Declaring a chain creates it; the flush empties one that existed.
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for chain in found.chains {
        let _ = writeln!(s, "-F {chain}");
    }
    for jump in &found.jumps {
        let _ = writeln!(s, "-D {}", &jump[3..]);
    }
    for rule in capture.rules(family) {
        s.push_str(&rule);
        s.push('\n');
    }
    for (from, to) in JUMPS {
        let _ = writeln!(s, "-A {from} -p tcp -j {to}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The input that removes our chains and the jumps into them, or `None` when
/// `iptables-save` shows nothing of ours.
pub fn uninstall_script(saved: &str) -> Option<String> {
    let found = present(saved);
    if found.chains.is_empty() && found.jumps.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for jump in &found.jumps {
        let _ = writeln!(s, "-D {}", &jump[3..]);
    }
    // Emptied first, so that no chain of ours still jumps into another when deleted.
    for chain in &found.chains {
        let _ = writeln!(s, "-F {chain}");
    }
    for chain in &found.chains {
        let _ = writeln!(s, "-X {chain}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Whether the Pod has IPv6 worth capturing: an address on an interface other than
/// loopback that is not link-local, from `/proc/net/if_inet6` (address, index,
/// prefix length, scope, flags, name per line).
pub fn has_routable_ipv6(if_inet6: &str) -> bool {
    const SCOPE_HOST: u8 = 0x10;
    const SCOPE_LINK: u8 = 0x20;
    if_inet6.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, _, _, scope, _, name] = fields[..] else {
            return false;
        };
        let Ok(scope) = u8::from_str_radix(scope, 16) else {
            return false;
        };
        name != "lo" && scope & (SCOPE_HOST | SCOPE_LINK) == 0
    })
}

/// An iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// From `iptables --version`: `iptables v1.8.9 (nf_tables)` or `(legacy)`; an
    /// old one that says neither is legacy (nf_tables came with 1.8, which says so).
    pub fn from_version(output: &str) -> Backend {
        if output.contains("nf_tables") {
            Backend::Nft
        } else {
            Backend::Legacy
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// What went wrong running iptables: one line each, for the init container's log.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("{program} not found: the image needs iptables")]
    Missing { program: String },
    #[error("{program}: permission denied: init needs root or CAP_NET_ADMIN in the Pod's network namespace")]
    PermissionDenied { program: String },
    #[error("{program} failed: {message}")]
    Failed { program: String, message: String },
    #[error("cannot run {program}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The iptables programs of one backend and family.
#[derive(Debug, Clone)]
pub struct Iptables {
    save: String,
    restore: String,
}

impl Iptables {
    /// The programs for `family`: with `auto`, the backend `iptables` resolves to,
    /// run through its `-nft`/`-legacy` names when the image has them (so IPv4 and
    /// IPv6 agree), else the plain names.
    pub fn open(choice: BackendChoice, family: Family) -> Result<(Iptables, Backend), InitError> {
        let base = family.program();
        let backend = match choice {
            BackendChoice::Nft => Backend::Nft,
            BackendChoice::Legacy => Backend::Legacy,
            BackendChoice::Auto => Backend::from_version(&run(base, &["--version"], None)?),
        };
        let named = |tool: &str| {
            let specific = format!("{base}-{}-{tool}", backend.suffix());
            if choice != BackendChoice::Auto || on_path(&specific) {
                specific
            } else {
                format!("{base}-{tool}")
            }
        };
        Ok((
            Iptables {
                save: named("save"),
                restore: named("restore"),
            },
            backend,
        ))
    }

    /// The nat table as `iptables-save` prints it.
    pub fn save(&self) -> Result<String, InitError> {
        run(&self.save, &["-t", "nat"], None)
    }

    /// Feeds `script` to `iptables-restore --noflush` (only the chains it names change).
    pub fn restore(&self, script: &str) -> Result<(), InitError> {
        run(&self.restore, &["--noflush"], Some(script)).map(drop)
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => InitError::Missing {
                program: program.to_owned(),
            },
            _ => InitError::Io {
                program: program.to_owned(),
                source,
            },
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(|source| InitError::Io {
            program: program.to_owned(),
            source,
        })?;
    }
    let out = child.wait_with_output().map_err(|source| InitError::Io {
        program: program.to_owned(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("must be root") || lower.contains("not permitted") {
        return Err(InitError::PermissionDenied {
            program: program.to_owned(),
        });
    }
    let message = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(|| out.status.to_string(), str::to_owned);
    Err(InitError::Failed {
        program: program.to_owned(),
        message,
    })
}

/// What `init` did, for its log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Printed,
    Installed { families: Vec<Family> },
    Removed { families: Vec<Family> },
}

/// `outrider-sidecar init`: prints (`--dry-run`, to `out`), installs or removes the
/// rules, IPv4 always and IPv6 when the Pod has a routable IPv6 address (or
/// ip6tables rules of ours to remove).
pub fn init(args: &InitArgs, out: &mut dyn std::io::Write) -> Result<Outcome, InitError> {
    let capture = Capture::from_args(args)?;
    let ipv6 = has_routable_ipv6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default());
    let mut families = vec![Family::V4];
    if ipv6 {
        families.push(Family::V6);
    }
    let io = |source| InitError::Io {
        program: "stdout".into(),
        source,
    };
    if args.dry_run {
        for family in families {
            if args.uninstall {
                writeln!(
                    out,
                    "# {}: removes the OUTRIDER_* chains of the nat table and the jumps into them",
                    family.program()
                )
                .map_err(io)?;
            } else {
                writeln!(out, "# {}-restore --noflush", family.program()).map_err(io)?;
                out.write_all(install_script(&capture, family, "").as_bytes())
                    .map_err(io)?;
            }
        }
        return Ok(Outcome::Printed);
    }
    let mut done = Vec::new();
    for family in families {
        let (tables, backend) = Iptables::open(args.iptables, family)?;
        tracing::info!(?family, ?backend, "writing capture rules");
        let saved = tables.save()?;
        if args.uninstall {
            if let Some(script) = uninstall_script(&saved) {
                tables.restore(&script)?;
            }
        } else {
            tables.restore(&install_script(&capture, family, &saved))?;
        }
        done.push(family);
    }
    Ok(if args.uninstall {
        Outcome::Removed { families: done }
    } else {
        Outcome::Installed { families: done }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut all = vec!["init", "--proxy-uid", "2102"];
        all.extend_from_slice(extra);
        Cli::try_parse_from(all).unwrap().init
    }

    fn capture(extra: &[&str]) -> Capture {
        Capture::from_args(&args(extra)).unwrap()
    }

    #[test]
    fn by_default_every_inbound_port_but_the_sidecars_and_every_outbound_connection_but_the_proxys_is_captured() {
        assert_eq!(
            capture(&[]).rules(Family::V4),
            [
                "-A OUTRIDER_INBOUND -i lo -j RETURN",
                "-A OUTRIDER_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A OUTRIDER_INBOUND -p tcp --dport 15001 -j RETURN",
                "-A OUTRIDER_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A OUTRIDER_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A OUTRIDER_INBOUND -p tcp -j OUTRIDER_IN_REDIRECT",
                "-A OUTRIDER_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A OUTRIDER_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A OUTRIDER_OUTPUT -o lo -j RETURN",
                "-A OUTRIDER_OUTPUT -p tcp -j OUTRIDER_REDIRECT",
                "-A OUTRIDER_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn exclusions_and_other_proxy_ports_are_rules_and_cidrs_go_to_their_own_family() {
        let c = capture(&[
            "--exclude-inbound-ports",
            "22, 9090,22",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8,169.254.169.254",
            "--proxy-inbound-port",
            "16006",
            "--proxy-outbound-port",
            "16001",
        ]);
        let v4 = c.rules(Family::V4);
        for line in [
            "-A OUTRIDER_INBOUND -p tcp --dport 22 -j RETURN",
            "-A OUTRIDER_INBOUND -p tcp --dport 9090 -j RETURN",
            "-A OUTRIDER_INBOUND -p tcp --dport 16001 -j RETURN",
            "-A OUTRIDER_INBOUND -p tcp --dport 16006 -j RETURN",
            "-A OUTRIDER_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
            "-A OUTRIDER_OUTPUT -p tcp --dport 5432 -j RETURN",
            "-A OUTRIDER_OUTPUT -d 10.0.0.0/8 -j RETURN",
            "-A OUTRIDER_OUTPUT -d 169.254.169.254/32 -j RETURN",
            "-A OUTRIDER_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
        ] {
            assert!(v4.iter().any(|l| l == line), "{line} missing from {v4:#?}");
        }
        assert_eq!(
            v4.iter().filter(|l| l.contains("--dport 22 ")).count(),
            1,
            "deduplicated"
        );
        assert!(!v4.iter().any(|l| l.contains("fd00")), "{v4:#?}");
        let v6 = c.rules(Family::V6);
        assert!(
            v6.iter().any(|l| l == "-A OUTRIDER_OUTPUT -d fd00::/8 -j RETURN"),
            "{v6:#?}"
        );
        assert!(!v6.iter().any(|l| l.contains("10.0.0.0")), "{v6:#?}");
    }

    #[test]
    fn listed_inbound_ports_are_the_only_ones_captured() {
        let rules = capture(&["--inbound-ports", "8080,9000", "--exclude-inbound-ports", "9000"]).rules(Family::V4);
        let inbound: Vec<&String> = rules.iter().filter(|l| l.starts_with("-A OUTRIDER_INBOUND ")).collect();
        assert_eq!(
            inbound,
            [
                "-A OUTRIDER_INBOUND -i lo -j RETURN",
                "-A OUTRIDER_INBOUND -p tcp --dport 8080 -j OUTRIDER_IN_REDIRECT",
            ]
        );
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        for (extra, says) in [
            (
                &["--inbound-ports", "80,http"][..],
                "--inbound-ports: \"http\" is not a port",
            ),
            (
                &["--inbound-ports", "15006"],
                "--inbound-ports: 15006 is one of the sidecar's own ports",
            ),
            (
                &["--exclude-outbound-ports", "0"],
                "--exclude-outbound-ports: 0 is not a port",
            ),
            (
                &["--exclude-outbound-cidrs", "10.0.0.0/33"],
                "--exclude-outbound-cidrs: \"10.0.0.0/33\": the prefix length must be 0 to 32",
            ),
            (
                &["--exclude-outbound-cidrs", "example.com"],
                "--exclude-outbound-cidrs: \"example.com\" is not an address or CIDR",
            ),
            (
                &["--proxy-outbound-port", "15006"],
                "--proxy-outbound-port: must differ from --proxy-inbound-port",
            ),
        ] {
            let err = Capture::from_args(&args(extra)).unwrap_err().to_string();
            assert!(err.starts_with(says), "{extra:?}: {err}");
        }
    }

    /// What `iptables-save -t nat` prints after `install_script` was applied to an
    /// empty table (rules normalised the way iptables prints them), plus someone
    /// else's rule that must survive.
    const INSTALLED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:OUTRIDER_INBOUND - [0:0]
:OUTRIDER_IN_REDIRECT - [0:0]
:OUTRIDER_OUTPUT - [0:0]
:OUTRIDER_REDIRECT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j OUTRIDER_INBOUND
-A OUTPUT -p tcp -j OUTRIDER_OUTPUT
-A OUTPUT -p udp -m udp --dport 53 -j OTHER
-A OUTRIDER_INBOUND -i lo -j RETURN
-A OUTRIDER_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A OUTRIDER_INBOUND -p tcp -j OUTRIDER_IN_REDIRECT
-A OUTRIDER_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTRIDER_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A OUTRIDER_OUTPUT -p tcp -j OUTRIDER_REDIRECT
-A OUTRIDER_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    #[test]
    fn a_fresh_install_declares_the_chains_fills_them_and_jumps_into_them_once() {
        let script = install_script(&capture(&[]), Family::V4, "");
        assert!(script.starts_with("*nat\n:OUTRIDER_INBOUND - [0:0]\n"), "{script}");
        assert!(
            script.ends_with("-A PREROUTING -p tcp -j OUTRIDER_INBOUND\n-A OUTPUT -p tcp -j OUTRIDER_OUTPUT\nCOMMIT\n"),
            "{script}"
        );
        assert!(
            !script.contains("-D ") && !script.contains("-F "),
            "nothing to replace: {script}"
        );
    }

    #[test]
    fn a_second_install_replaces_the_jumps_and_empties_the_chains_so_nothing_doubles() {
        let script = install_script(&capture(&[]), Family::V4, INSTALLED);
        for line in [
            "-F OUTRIDER_INBOUND",
            "-F OUTRIDER_REDIRECT",
            "-D PREROUTING -p tcp -j OUTRIDER_INBOUND",
            "-D OUTPUT -p tcp -j OUTRIDER_OUTPUT",
        ] {
            assert!(script.lines().any(|l| l == line), "{line} missing: {script}");
        }
        let jumps = script
            .lines()
            .filter(|l| *l == "-A PREROUTING -p tcp -j OUTRIDER_INBOUND")
            .count();
        assert_eq!(jumps, 1, "{script}");
        assert!(
            !script.contains("OTHER"),
            "someone else's rules are left alone: {script}"
        );
        // Deletions come before the additions they make room for.
        let deleted = script.find("-D PREROUTING").unwrap();
        let added = script.find("-A PREROUTING").unwrap();
        assert!(deleted < added, "{script}");
    }

    #[test]
    fn uninstall_removes_the_jumps_then_empties_then_deletes_our_chains_only() {
        let script = uninstall_script(INSTALLED).unwrap();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            [
                "*nat",
                "-D PREROUTING -p tcp -j OUTRIDER_INBOUND",
                "-D OUTPUT -p tcp -j OUTRIDER_OUTPUT",
                "-F OUTRIDER_INBOUND",
                "-F OUTRIDER_IN_REDIRECT",
                "-F OUTRIDER_OUTPUT",
                "-F OUTRIDER_REDIRECT",
                "-X OUTRIDER_INBOUND",
                "-X OUTRIDER_IN_REDIRECT",
                "-X OUTRIDER_OUTPUT",
                "-X OUTRIDER_REDIRECT",
                "COMMIT",
            ]
        );
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A OUTPUT -p udp -j OTHER\nCOMMIT\n";
        assert_eq!(uninstall_script(clean), None, "nothing of ours: nothing to run");
        assert_eq!(uninstall_script(""), None);
    }

    #[test]
    fn only_the_nat_table_is_read() {
        let filter_only = "*filter\n:OUTRIDER_INBOUND - [0:0]\n-A INPUT -j OUTRIDER_INBOUND\nCOMMIT\n";
        assert_eq!(uninstall_script(filter_only), None);
    }

    #[test]
    fn ipv6_counts_only_when_an_interface_other_than_loopback_has_a_non_link_local_address() {
        let link_local_only = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                               00000000000000000000000000000001 01 80 10 80       lo\n";
        assert!(!has_routable_ipv6(link_local_only));
        assert!(!has_routable_ipv6(""));
        let global = "fd000000000000000000000000000002 04 40 00 80     eth0\n";
        assert!(has_routable_ipv6(global));
        assert!(!has_routable_ipv6("garbage line\n"));
    }

    #[test]
    fn the_backend_is_what_iptables_says_it_is() {
        assert_eq!(Backend::from_version("iptables v1.8.9 (nf_tables)\n"), Backend::Nft);
        assert_eq!(Backend::from_version("iptables v1.8.7 (legacy)\n"), Backend::Legacy);
        assert_eq!(Backend::from_version("iptables v1.6.1\n"), Backend::Legacy);
    }

    #[test]
    fn dry_run_prints_the_rules_and_runs_nothing() {
        // No iptables on PATH: a dry run must not need one.
        let mut out = Vec::new();
        let outcome = init(&args(&["--dry-run", "--iptables", "legacy"]), &mut out).unwrap();
        assert_eq!(outcome, Outcome::Printed);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("# iptables-restore --noflush\n*nat\n"), "{text}");
        assert!(
            text.contains("-A OUTRIDER_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_program_is_one_clear_line() {
        let err = run("outrider-no-such-iptables", &["--version"], None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "outrider-no-such-iptables not found: the image needs iptables");
        assert!(!err.contains('\n'));
    }
}
