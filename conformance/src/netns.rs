//! A network-namespace NAT lab: two private sites behind Linux NAT routers and a
//! "public" segment, built from `ip` and `nft` commands, torn down on drop.
//!
//! ```text
//!              public ns `<id>p`: bridge br0 198.51.100.1/24 (trackers, STUN live here)
//!                 |  wa                                   |  wb
//!   router `<id>ra`: wan 198.51.100.10/24      router `<id>rb`: wan 198.51.100.20/24
//!                    lan 10.1.0.1/24                           lan 10.2.0.1/24
//!                 |                                       |
//!   host `<id>ha`: eth0 10.1.0.2/24 (default via .1)   host `<id>hb`: eth0 10.2.0.2/24
//! ```
//!
//! - `<id>` is `fy<pid>x<counter>`: unique per lab within a process (tests run in
//!   parallel) and across concurrent processes. Every interface is created
//!   directly inside its lab namespace (`ip -n NS link add … peer name … netns
//!   OTHER`), never in the caller's namespace, so the short fixed interface names
//!   (`br0`, `wa`, `wb`, `wan`, `lan`, `eth0`) cannot collide between labs.
//! - Routers forward (`ip_forward=1`) and, per [`NatKind`], run the nftables table
//!   `ferry_lab` (see [`NatLab::ruleset`]): `masquerade` on `wan` for LAN sources,
//!   plus the one filter a NAT implies, `iifname "wan" ct state new drop`: an
//!   inbound packet matching no mapping is dropped (without it, an unsolicited
//!   packet that reaches a router first leaves a conntrack entry that makes the
//!   router re-map its host's later outgoing flow to that peer to another port,
//!   which defeats simultaneous hole punching — real NATs keep no such state).
//! - [`NatKind::None`] sites are plainly routed: no table; the public namespace
//!   forwards and routes `10.N.0.0/24` to that router, so their hosts are
//!   reachable at their private addresses.
//!
//! Nothing runs in the caller's namespace and the caller's namespace is never
//! changed. [`NatLab`]'s `Drop` kills the processes it spawned (their process
//! groups), then any process left in its namespaces, then deletes the
//! namespaces (which deletes their interfaces). [`CoturnStun`] kills coturn and
//! removes its temporary directory on drop.
//!
//! Everything is test infrastructure: a lab that cannot be built on a machine
//! that *can* make namespaces is a panic; only missing capabilities (not root, no
//! `ip netns`, no `nft`/nf_tables) make [`NatLab::new`] return `None`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How a site's router treats its host's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// No NAT: the router only forwards; the host is reachable at its private address.
    None,
    /// Endpoint-independent mapping: plain `masquerade`. Linux keeps the source
    /// port when it is free, so one socket gets the same public ip:port for every
    /// destination.
    EndpointIndependent,
    /// Address-and-port-dependent ("symmetric") mapping: `masquerade random`,
    /// which picks a random public port for every new flow, i.e. a different
    /// public port for every destination.
    Symmetric,
}

/// One of the two private sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// 10.1.0.0/24 behind 198.51.100.10.
    A,
    /// 10.2.0.0/24 behind 198.51.100.20.
    B,
}

impl Site {
    /// Both sites.
    pub const ALL: [Site; 2] = [Site::A, Site::B];

    fn index(self) -> usize {
        match self {
            Site::A => 0,
            Site::B => 1,
        }
    }

    /// 1 for A, 2 for B: the third octet of the LAN, the tens of the WAN address.
    fn number(self) -> u8 {
        match self {
            Site::A => 1,
            Site::B => 2,
        }
    }
}

/// Set this environment variable to make [`NatLab::new`] panic instead of
/// returning `None` when the machine cannot build the lab (for CI that must
/// not silently skip).
pub const REQUIRE_ENV: &str = "FERRY_REQUIRE_NETNS";

/// How long any single `ip`/`nft` setup command may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The lab: five namespaces (public, two routers, two hosts) and the processes
/// spawned in them. Dropping it kills those processes and deletes the namespaces.
pub struct NatLab {
    kinds: [NatKind; 2],
    public: String,
    routers: [String; 2],
    hosts: [String; 2],
    /// Namespaces actually created, in creation order (deleted in reverse).
    created: Vec<String>,
    children: Vec<Child>,
}

impl NatLab {
    /// The public segment's address, where servers live.
    pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    /// Build a lab with site A behind `a` and site B behind `b`.
    ///
    /// `None`, with the reason on stderr, when this machine cannot make the lab
    /// (not root, no `ip netns`, no `nft` or nf_tables); panics instead if
    /// [`REQUIRE_ENV`] is set. Panics (after cleaning up) if a later setup step fails.
    pub fn new(a: NatKind, b: NatKind) -> Option<NatLab> {
        let id = format!(
            "fy{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = NatLab {
            kinds: [a, b],
            public: format!("{id}p"),
            routers: [format!("{id}ra"), format!("{id}rb")],
            hosts: [format!("{id}ha"), format!("{id}hb")],
            created: Vec::new(),
            children: Vec::new(),
        };
        if let Err(reason) = lab.probe() {
            drop(lab);
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("the network-namespace lab is required ({REQUIRE_ENV}) but: {reason}");
            }
            eprintln!("skipping: cannot build a network-namespace lab here: {reason}");
            return None;
        }
        if let Err(e) = lab.build() {
            panic!("building the network-namespace lab failed: {e}"); // `lab` drops: cleanup
        }
        Some(lab)
    }

    /// The capability check: the tools exist, a namespace can be made and
    /// nftables works inside it. Leaves the public namespace created.
    fn probe(&mut self) -> Result<(), String> {
        for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
            match Command::new(tool)
                .arg(arg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
            {
                Ok(s) if s.success() => {}
                Ok(s) => return Err(format!("`{tool} {arg}` failed ({s})")),
                Err(e) => return Err(format!("cannot run `{tool}`: {e}")),
            }
        }
        let public = self.public.clone();
        self.add_namespace(&public).map_err(|e| e.to_string())?;
        run(self.command(&public, "nft").args(["list", "ruleset"]))
            .map_err(|e| format!("nftables unusable in a namespace: {e}"))
    }

    fn add_namespace(&mut self, ns: &str) -> io::Result<()> {
        run(Command::new("ip").args(["netns", "add", ns]))?;
        self.created.push(ns.to_owned());
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))
    }

    fn build(&mut self) -> io::Result<()> {
        let p = self.public.clone();
        let ip_n = |ns: &str, args: &[&str]| run(Command::new("ip").args(["-n", ns]).args(args));
        ip_n(&p, &["link", "add", "br0", "type", "bridge"])?;
        ip_n(&p, &["addr", "add", "198.51.100.1/24", "dev", "br0"])?;
        ip_n(&p, &["link", "set", "br0", "up"])?;
        if self.kinds.contains(&NatKind::None) {
            self.sysctl_forward(&p)?;
        }
        for site in Site::ALL {
            let n = site.number();
            let (r, h) = (
                self.router_ns(site).to_owned(),
                self.host_ns(site).to_owned(),
            );
            self.add_namespace(&r)?;
            self.add_namespace(&h)?;
            let port = if site == Site::A { "wa" } else { "wb" };
            let wan = format!("{}/24", self.router_wan_ip(site));
            let lan = format!("10.{n}.0.1/24");
            let host = format!("{}/24", self.host_ip(site));
            let lan_net = format!("10.{n}.0.0/24");
            let gw = format!("10.{n}.0.1");
            ip_n(
                &r,
                &[
                    "link", "add", "wan", "type", "veth", "peer", "name", port, "netns", &p,
                ],
            )?;
            ip_n(&p, &["link", "set", port, "master", "br0"])?;
            ip_n(&p, &["link", "set", port, "up"])?;
            ip_n(&r, &["addr", "add", &wan, "dev", "wan"])?;
            ip_n(&r, &["link", "set", "wan", "up"])?;
            ip_n(
                &r,
                &[
                    "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &h,
                ],
            )?;
            ip_n(&r, &["addr", "add", &lan, "dev", "lan"])?;
            ip_n(&r, &["link", "set", "lan", "up"])?;
            ip_n(&r, &["route", "add", "default", "via", "198.51.100.1"])?;
            ip_n(&h, &["addr", "add", &host, "dev", "eth0"])?;
            ip_n(&h, &["link", "set", "eth0", "up"])?;
            ip_n(&h, &["route", "add", "default", "via", &gw])?;
            self.sysctl_forward(&r)?;
            match self.kinds[site.index()] {
                NatKind::None => {
                    let via = self.router_wan_ip(site).to_string();
                    ip_n(&p, &["route", "add", &lan_net, "via", &via])?;
                }
                kind => {
                    let mut nft = self.command(&r, "nft");
                    nft.args(["-f", "-"]);
                    run_with_stdin(&mut nft, Self::ruleset(site, kind).as_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn sysctl_forward(&self, ns: &str) -> io::Result<()> {
        run(self
            .command(ns, "sh")
            .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]))
    }

    /// The nftables ruleset a NAT router of `site` gets for `kind` (empty for
    /// [`NatKind::None`]).
    pub fn ruleset(site: Site, kind: NatKind) -> String {
        let flags = match kind {
            NatKind::None => return String::new(),
            NatKind::EndpointIndependent => "",
            NatKind::Symmetric => " random",
        };
        let n = site.number();
        format!(
            "table ip ferry_lab {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"wan\" ip saddr 10.{n}.0.0/24 masquerade{flags}\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"wan\" ct state new drop\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"wan\" ct state new drop\n\
             \t}}\n\
             }}\n"
        )
    }

    /// The NAT kind of `site`.
    pub fn nat_kind(&self, site: Site) -> NatKind {
        self.kinds[site.index()]
    }

    /// The public namespace (bridge at [`Self::PUBLIC_IP`]).
    pub fn public_ns(&self) -> &str {
        &self.public
    }

    /// The host namespace of `site`.
    pub fn host_ns(&self, site: Site) -> &str {
        &self.hosts[site.index()]
    }

    /// The router namespace of `site`.
    pub fn router_ns(&self, site: Site) -> &str {
        &self.routers[site.index()]
    }

    /// Every namespace of this lab.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut all = vec![self.public.as_str()];
        all.extend(self.routers.iter().map(String::as_str));
        all.extend(self.hosts.iter().map(String::as_str));
        all
    }

    /// 198.51.100.1.
    pub fn public_ip(&self) -> Ipv4Addr {
        Self::PUBLIC_IP
    }

    /// The host's private address: 10.1.0.2 or 10.2.0.2.
    pub fn host_ip(&self, site: Site) -> Ipv4Addr {
        Ipv4Addr::new(10, site.number(), 0, 2)
    }

    /// The router's public address: 198.51.100.10 or 198.51.100.20.
    pub fn router_wan_ip(&self, site: Site) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, 10 * site.number())
    }

    /// A `Command` running `program` inside `ns` (see [`netns_command`]).
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        netns_command(ns, program)
    }

    /// Spawn `command` (usually from [`Self::command`]) in its own process
    /// group and keep it: it is killed when the lab drops. Stdio is whatever the
    /// command says (inherited by default); a piped stdout becomes
    /// [`Spawned::next_line`], a piped stdin is handed back in [`Spawned::stdin`].
    pub fn spawn(&mut self, mut command: Command) -> io::Result<Spawned> {
        command.process_group(0);
        let mut child = command.spawn()?;
        let spawned = Spawned {
            pid: child.id(),
            stdin: child.stdin.take(),
            lines: child.stdout.take().map(line_channel),
        };
        self.children.push(child);
        Ok(spawned)
    }

    /// Start a UDP address reflector (a poor man's STUN server) on `ip` at
    /// every port of `ports` inside `ns`: each datagram is answered with the
    /// text `IP:PORT` of its observed source. Returns once it is bound (≤ 15 s).
    pub fn spawn_udp_reflector(&mut self, ns: &str, ip: Ipv4Addr, ports: &[u16]) -> io::Result<()> {
        let mut command = self.command(ns, "python3");
        command
            .args(["-c", UDP_REFLECTOR_PY, &ip.to_string()])
            .args(ports.iter().map(u16::to_string))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut reflector = self.spawn(command)?;
        let line = reflector.next_line(Duration::from_secs(15))?;
        if line == "ready" {
            Ok(())
        } else {
            Err(io::Error::other(format!("reflector said {line:?}")))
        }
    }

    fn kill_children(&mut self) {
        for mut child in self.children.drain(..) {
            // Not yet reaped, so the group id is still ours even if it exited.
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        self.kill_children();
        // Anything else still inside the lab's namespaces was started through it
        // (e.g. by a test that panicked mid-way): end it by pid.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut left = Vec::new();
            for ns in &self.created {
                if let Ok(out) = Command::new("ip")
                    .args(["netns", "pids", ns])
                    .stderr(Stdio::null())
                    .output()
                {
                    left.extend(
                        String::from_utf8_lossy(&out.stdout)
                            .split_whitespace()
                            .map(str::to_owned),
                    );
                }
            }
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&left)
                .stderr(Stdio::null())
                .status();
            thread::sleep(Duration::from_millis(20));
        }
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "delete", &ns])) {
                eprintln!("netns lab: cannot delete namespace {ns}: {e}");
            }
        }
    }
}

/// A process kept by [`NatLab::spawn`].
pub struct Spawned {
    /// Its pid (also its process group id).
    pub pid: u32,
    /// Its stdin, if the command asked for a pipe.
    pub stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
}

impl Spawned {
    /// The next line of its (piped) stdout, waiting at most `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> io::Result<String> {
        let lines = self
            .lines
            .as_ref()
            .ok_or_else(|| io::Error::other("stdout was not piped"))?;
        match lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no line from pid {} within {timeout:?}", self.pid),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("pid {} closed its stdout", self.pid),
            )),
        }
    }

    /// Write `line` and a newline to its (piped) stdin.
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("stdin was not piped"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }
}

/// `ip netns exec NS PROGRAM`: `ip` enters the namespace and execs the
/// program, so the child's pid is the program's.
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).arg(program);
    command
}

/// Run `command` to completion with stdin null and output captured, killing
/// it (its whole process group) if it has not exited within `timeout`
/// (`ErrorKind::TimedOut`, with what it printed so far).
pub fn output_within(command: &mut Command, timeout: Duration) -> io::Result<Output> {
    output_with_input(command, None, timeout)
}

/// [`output_within`], with `input` written to its stdin (then closed).
pub fn output_with_input(
    command: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Output> {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Not yet reaped, so the group id is certainly still ours.
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let collect =
        |h: Option<thread::JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{command:?} still running after {timeout:?}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        )),
    }
}

/// A coturn STUN-only server started by [`spawn_coturn_stun`]; killed (and its
/// temporary directory removed) on drop.
pub struct CoturnStun {
    child: Child,
    dir: PathBuf,
    addr: SocketAddrV4,
    log: Receiver<String>,
}

impl CoturnStun {
    /// Where it listens (UDP, and TCP).
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged since start (or since the last call).
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for CoturnStun {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The coturn arguments [`spawn_coturn_stun`] uses, `dir` being its private
/// temporary directory.
pub fn coturn_stun_args(ip: Ipv4Addr, port: u16, dir: &std::path::Path) -> Vec<String> {
    let in_dir = |name: &str| dir.join(name).to_string_lossy().into_owned();
    [
        "-n", // no configuration file: everything is on this command line
        "--stun-only",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--no-rfc5780", // one address: no alternate port for NAT behaviour discovery
        "--listening-ip",
        &ip.to_string(),
        "--listening-port",
        &port.to_string(),
        "--relay-threads",
        "1",
        "--log-file",
        "stdout",
        "--simple-log",
        "-v", // prints the "UDP listener opened on: IP:PORT" readiness line
        "--pidfile",
        &in_dir("turnserver.pid"),
        "--db",
        &in_dir("turndb"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Start `turnserver` (coturn) as a STUN-only server on `ip:port` (UDP and
/// TCP; `port` must not be 0) inside namespace `ns`, and wait (≤ 15 s) for its
/// log line saying the UDP listener is open.
///
/// No TURN, TLS, DTLS, CLI, configuration file or RFC 5780; it logs to its
/// stdout (kept in [`CoturnStun::drain_log`]); its pid file and (unused)
/// SQLite user database go to a fresh temporary directory removed on drop;
/// `NOTIFY_SOCKET` is removed so it never talks to systemd.
pub fn spawn_coturn_stun(ns: &str, ip: Ipv4Addr, port: u16) -> io::Result<CoturnStun> {
    if port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "coturn needs a fixed port",
        ));
    }
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferry-coturn-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let mut command = netns_command(ns, "turnserver");
    command
        .args(coturn_stun_args(ip, port, &dir))
        .current_dir(&dir)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let log = match child.stdout.take() {
        Some(stdout) => line_channel(stdout),
        None => mpsc::channel().1,
    };
    let mut server = CoturnStun {
        child,
        dir,
        addr: SocketAddrV4::new(ip, port),
        log,
    };
    let ready = format!("{ip}:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) => {
                if line.contains("UDP listener opened on") && line.contains(&ready) {
                    return Ok(server);
                }
                let _ = writeln!(seen, "{line}");
            }
            Err(e) => {
                let status: Option<ExitStatus> = server.child.try_wait().ok().flatten();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("coturn not listening on {ready} ({e}; exit {status:?}); log:\n{seen}"),
                ));
            }
        }
    }
}

/// The reflector run by [`NatLab::spawn_udp_reflector`]: `python3 -c SCRIPT IP PORT...`.
pub const UDP_REFLECTOR_PY: &str = r#"
import select, socket, sys
socks = []
for port in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(port)))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, addr = s.recvfrom(2048)
        s.sendto(("%s:%d" % addr).encode(), addr)
"#;

/// Run to completion (bounded); a non-zero exit is an error carrying stderr.
fn run(command: &mut Command) -> io::Result<()> {
    let out = output_within(command, SETUP_TIMEOUT)?;
    check(command, &out)
}

fn run_with_stdin(command: &mut Command, input: &[u8]) -> io::Result<()> {
    let out = output_with_input(command, Some(input), SETUP_TIMEOUT)?;
    check(command, &out)
}

fn check(command: &Command, out: &Output) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// SIGKILL process group `pgid` (by id, via `kill`); errors ignored.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn line_channel(stdout: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // Keep draining after the receiver is gone, so the child never blocks
        // on (or dies of) a full or closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn read_all(mut from: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}
