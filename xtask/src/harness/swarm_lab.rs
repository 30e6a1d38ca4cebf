//! The swarm lab of `cargo xtask e2e --mode swarm`: several "hosts" on one machine, each a
//! network namespace with its own address on a lab bridge, its own `dockerd` and its own
//! sshd (whose sessions talk to that node's engine through `SetEnv DOCKER_HOST`).
//!
//! `dockerd` enters its namespace with `nsenter --net=` (`ip netns exec` remounts `/sys`, and
//! dockerd then stops with "Devices cgroup isn't mounted"). The host's engine and its socket
//! are never used; every address is in the lab's own /24 on its bridge. Everything created
//! (bridge, namespaces and their veths, daemons, dockerd's mounts, files) is removed when
//! the lab is dropped, also after a failure; [`SwarmLab::leftovers`] checks that it was.

use std::{
    cell::RefCell,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::{
    harness::{daemon::Daemon, docker::DOCKERD, sshd},
    provision,
};

/// One lab host.
pub(crate) struct Node {
    /// `tmsw<id>-<i>`, the namespace's name under /var/run/netns.
    pub(crate) netns: String,
    pub(crate) addr: String,
    /// This node's engine: `unix://<lab dir>/<netns>.sock`.
    pub(crate) docker_host: String,
    sshd: Option<Daemon>,
    /// In a cell: a scenario stops and restarts it (a node lost) while the lab is shared.
    dockerd: RefCell<Option<Daemon>>,
}

/// The nodes, their bridge and the client key and known_hosts that reach their sshds.
pub(crate) struct SwarmLab {
    pub(crate) nodes: Vec<Node>,
    /// `tmsw<id>`: the prefix of every namespace and link of this lab.
    pub(crate) bridge: String,
    pub(crate) dir: PathBuf,
    /// The host's address on the bridge (`.254`): what the nodes reach of this machine, such
    /// as the lab registry; every engine takes the bridge's /24 as an insecure registry.
    pub(crate) gateway: String,
    pub(crate) client_key: PathBuf,
    pub(crate) known_hosts: PathBuf,
    /// The namespaces created so far, removed on drop even if a node failed to start.
    netns: Vec<String>,
    /// `10.249.<k>`: the bridge's /24 without its last byte.
    net: String,
}

impl SwarmLab {
    /// `n` nodes: `10.249.<k>.1..n` on a bridge; the host is `.254` on it.
    pub(crate) fn start(sh: &Shell, n: usize) -> anyhow::Result<SwarmLab> {
        provision::ensure(sh, &[DOCKERD, sshd::SSHD, sshd::SSH, provision::CURL])?;
        // Short, per-run names: interface names have at most 15 bytes.
        let id = std::process::id() % 10_000;
        let net = format!("10.249.{}", id % 250 + 1);
        let dir = std::env::temp_dir().join(format!("tmsw-{id}"));
        let _ = fs::remove_dir_all(&dir);
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)?;
        }
        let mut lab = SwarmLab {
            nodes: Vec::new(),
            bridge: format!("tmsw{id}"),
            client_key: dir.join("client_key"),
            known_hosts: dir.join("known_hosts"),
            gateway: format!("{net}.254"),
            dir,
            netns: Vec::new(),
            net: net.clone(),
        };
        // The bridge lives in a namespace of its own (the "switch"): the host's netfilter,
        // where Docker sets FORWARD to DROP and bridged frames are filtered, never sees the
        // nodes' traffic. The host reaches the nodes over one veth into the switch.
        let prefix = lab.bridge.clone();
        let switch = format!("{prefix}-0");
        cmd!(sh, "ip netns add {switch}").quiet().run()?;
        lab.netns.push(switch.clone());
        let bridge = "br0";
        cmd!(sh, "ip -n {switch} link add {bridge} type bridge")
            .quiet()
            .run()?;
        cmd!(sh, "ip -n {switch} link set {bridge} up")
            .quiet()
            .run()?;
        let gateway = format!("{net}.254/24");
        let (host_end, switch_end) = (format!("{prefix}h0"), format!("{prefix}s0"));
        cmd!(
            sh,
            "ip link add {host_end} type veth peer name {switch_end}"
        )
        .quiet()
        .run()?;
        cmd!(sh, "ip link set {switch_end} netns {switch}")
            .quiet()
            .run()?;
        cmd!(
            sh,
            "ip -n {switch} link set {switch_end} master {bridge} up"
        )
        .quiet()
        .run()?;
        cmd!(sh, "ip addr add {gateway} dev {host_end}")
            .quiet()
            .run()?;
        cmd!(sh, "ip link set {host_end} up").quiet().run()?;
        let host_key = lab.dir.join("host_key");
        for (key, comment) in [
            (&host_key, "swarm-lab-host"),
            (&lab.client_key, "swarm-lab"),
        ] {
            cmd!(sh, "ssh-keygen -q -t ed25519 -N '' -C {comment} -f {key}")
                .quiet()
                .run()
                .context("ssh-keygen")?;
        }
        let public = fs::read_to_string(host_key.with_extension("pub"))?;
        let key_fields: Vec<&str> = public.split_whitespace().take(2).collect();
        let mut known_hosts = String::new();
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        for i in 1..=n {
            let netns = format!("tmsw{id}-{i}");
            let addr = format!("{net}.{i}");
            cmd!(sh, "ip netns add {netns}").quiet().run()?;
            lab.netns.push(netns.clone());
            let (outside, inside) = (format!("{prefix}s{i}"), format!("{prefix}n{i}"));
            let cidr = format!("{addr}/24");
            cmd!(sh, "ip link add {outside} type veth peer name {inside}")
                .quiet()
                .run()?;
            cmd!(sh, "ip link set {outside} netns {switch}")
                .quiet()
                .run()?;
            cmd!(sh, "ip -n {switch} link set {outside} master {bridge} up")
                .quiet()
                .run()?;
            cmd!(sh, "ip link set {inside} netns {netns}")
                .quiet()
                .run()?;
            cmd!(sh, "ip -n {netns} addr add {cidr} dev {inside}")
                .quiet()
                .run()?;
            cmd!(sh, "ip -n {netns} link set {inside} up")
                .quiet()
                .run()?;
            cmd!(sh, "ip -n {netns} link set lo up").quiet().run()?;
            let node = start_node(sh, &lab.dir, &netns, &addr, i, &host_key, &net)?;
            known_hosts.push_str(&format!("{addr} {}\n", key_fields.join(" ")));
            lab.nodes.push(node);
        }
        fs::write(&lab.known_hosts, known_hosts)?;
        for node in &lab.nodes {
            node.wait_ready(&lab.dir)?;
        }
        Ok(lab)
    }

    /// A shell whose `docker` talks to node `i` (0-based).
    pub(crate) fn docker(&self, i: usize) -> anyhow::Result<Shell> {
        let sh = Shell::new()?;
        sh.set_var("DOCKER_HOST", &self.nodes[i].docker_host);
        Ok(sh)
    }

    /// Stops node `i`'s `dockerd` (a node lost): it stops the node's containers first, within
    /// its shutdown timeout, so nothing of them is left running.
    pub(crate) fn stop_engine(&self, i: usize) {
        drop(self.nodes[i].dockerd.take());
    }

    /// Starts node `i`'s `dockerd` again on its state: it rejoins the swarm by itself.
    pub(crate) fn start_engine(&self, sh: &Shell, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let dockerd = start_dockerd(sh, &self.dir, &node.netns, i + 1, &self.net)?;
        node.dockerd.replace(Some(dockerd));
        node.wait_ready(&self.dir)
    }

    /// Loads `docker load` archives into every node's engine: the nodes pull nothing from
    /// the internet, and swarm tasks use these images as they are (prefer-offline).
    pub(crate) fn load_images(&self, archives: &[PathBuf]) -> anyhow::Result<()> {
        // One thread per node: the engines load side by side.
        std::thread::scope(|scope| {
            let loads: Vec<_> = self
                .nodes
                .iter()
                .map(|node| {
                    let (host, netns) = (&node.docker_host, &node.netns);
                    scope.spawn(move || load_into(host, netns, archives))
                })
                .collect();
            loads.into_iter().try_for_each(|load| {
                load.join()
                    .unwrap_or_else(|_| bail!("loading images into a node panicked"))
            })
        })
    }

    /// What the lab left behind after it was dropped: namespaces, links, mounts, its dir.
    pub(crate) fn leftovers(sh: &Shell, bridge: &str, dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let prefix = bridge.to_owned();
        let netns = cmd!(sh, "ip netns list").quiet().read().unwrap_or_default();
        found.extend(
            netns
                .lines()
                .filter(|line| line.starts_with(&format!("{prefix}-")))
                .map(|line| format!("netns {line}")),
        );
        let links = cmd!(sh, "ip -o link show")
            .quiet()
            .read()
            .unwrap_or_default();
        found.extend(
            links
                .lines()
                .filter_map(|line| line.split(": ").nth(1))
                .filter(|name| name.starts_with(&prefix))
                .map(|name| format!("link {name}")),
        );
        found.extend(mounts_under(dir).into_iter().map(|m| format!("mount {m}")));
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
        found
    }
}

/// `docker load` of each archive into the engine at `docker_host`.
fn load_into(docker_host: &str, netns: &str, archives: &[PathBuf]) -> anyhow::Result<()> {
    let docker = Shell::new()?;
    docker.set_var("DOCKER_HOST", docker_host);
    for archive in archives {
        cmd!(docker, "docker load --quiet --input {archive}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("loading `{}` into {netns}", archive.display()))?;
    }
    Ok(())
}

fn start_node(
    sh: &Shell,
    dir: &Path,
    netns: &str,
    addr: &str,
    i: usize,
    host_key: &Path,
    net: &str,
) -> anyhow::Result<Node> {
    let dockerd = start_dockerd(sh, dir, netns, i, net)?;
    let docker_host = format!("unix://{}", dir.join(format!("{netns}.sock")).display());
    let authorized = dir.join("client_key.pub");
    let config = dir.join(format!("{netns}.sshd_config"));
    fs::write(
        &config,
        format!(
            "# Lab host {netns}: key authentication, root allowed, sessions use this node's engine.
Port 22
ListenAddress {addr}
HostKey {host_key}
AuthorizedKeysFile {authorized}
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel VERBOSE
SetEnv DOCKER_HOST={docker_host}
",
            host_key = host_key.display(),
            authorized = authorized.display(),
        ),
    )?;
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .context("sshd not found")?;
    let nsenter = provision::find_program("nsenter").context("nsenter not found")?;
    let args = vec![
        format!("--net=/var/run/netns/{netns}"),
        sshd.display().to_string(),
        "-D".to_owned(),
        "-e".to_owned(),
        "-f".to_owned(),
        config.display().to_string(),
    ];
    let sshd = Daemon::start(sh, dir, &format!("{netns}-sshd"), &nsenter, &args)?;
    Ok(Node {
        netns: netns.to_owned(),
        addr: addr.to_owned(),
        docker_host,
        sshd: Some(sshd),
        dockerd: RefCell::new(Some(dockerd)),
    })
}

fn start_dockerd(
    sh: &Shell,
    dir: &Path,
    netns: &str,
    i: usize,
    net: &str,
) -> anyhow::Result<Daemon> {
    let env = provision::find_program("env").context("env not found")?;
    let dockerd = provision::find_program("dockerd").context("dockerd not found")?;
    let node_dir = dir.join(netns);
    // `env` and `nsenter` exec, so the pid start-stop-daemon records is dockerd's.
    let args = vec![
        // No DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: with it an engine never pulls a task's
        // image, and workers would never get ours from the lab registry. A stand-in's pull
        // fails at once (no route out of the namespace) and the engine uses the loaded image.
        provision::find_program("nsenter")
            .context("nsenter not found")?
            .display()
            .to_string(),
        format!("--net=/var/run/netns/{netns}"),
        dockerd.display().to_string(),
        "--data-root".to_owned(),
        node_dir.join("data").display().to_string(),
        "--exec-root".to_owned(),
        node_dir.join("exec").display().to_string(),
        "--pidfile".to_owned(),
        node_dir.join("dockerd.pid").display().to_string(),
        "-H".to_owned(),
        format!("unix://{}", dir.join(format!("{netns}.sock")).display()),
        "--exec-opt".to_owned(),
        "native.cgroupdriver=cgroupfs".to_owned(),
        "--bip".to_owned(),
        format!("172.30.{i}.1/24"),
        // Under the drop's TERM-then-KILL (10 s): a stopped engine has stopped its containers.
        "--shutdown-timeout".to_owned(),
        "5".to_owned(),
        // The lab registry listens on the host's bridge address, over plain HTTP.
        "--insecure-registry".to_owned(),
        format!("{net}.0/24"),
    ];
    Daemon::start(sh, dir, &format!("{netns}-dockerd"), &env, &args)
}

impl Node {
    fn wait_ready(&self, dir: &Path) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        sh.set_var("DOCKER_HOST", &self.docker_host);
        let deadline = Instant::now() + Duration::from_secs(60);
        let format = "{{.Server.Version}}";
        while cmd!(sh, "docker version --format {format}")
            .quiet()
            .ignore_stderr()
            .read()
            .is_err()
        {
            if Instant::now() > deadline {
                let log = fs::read_to_string(dir.join(format!("{}-dockerd.log", self.netns)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "dockerd of {} did not answer within 60 s; its log ends:\n{}",
                    self.netns,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // sshd says when it listens (a probe connection would show in its log as a client).
        let sshd_log = dir.join(format!("{}-sshd.log", self.netns));
        let listening = format!("Server listening on {}", self.addr);
        while !fs::read_to_string(&sshd_log)
            .unwrap_or_default()
            .contains(&listening)
        {
            if Instant::now() > deadline {
                bail!(
                    "sshd of {} did not listen on {} within 60 s; its log:\n{}",
                    self.netns,
                    self.addr,
                    fs::read_to_string(&sshd_log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Mount points at or under `dir` (dockerd's overlay and netns mounts), deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut found: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.len()));
    found.dedup();
    found
}

impl Drop for SwarmLab {
    fn drop(&mut self) {
        // Daemons first (sshd, then dockerd: it unmounts its own state), by pid.
        for node in &mut self.nodes {
            drop(node.sshd.take());
            drop(node.dockerd.get_mut().take());
        }
        let Ok(sh) = Shell::new() else { return };
        // What a killed dockerd left mounted (its namespaces' files, overlay layers).
        for point in mounts_under(&self.dir) {
            let _ = cmd!(sh, "umount -l {point}").quiet().ignore_status().run();
        }
        // Removing a namespace removes its end of each veth pair, and so the pair.
        for netns in &self.netns {
            let _ = cmd!(sh, "ip netns del {netns}")
                .quiet()
                .ignore_status()
                .run();
        }
        // Gone with the switch's namespace already; this is for a run that stopped between.
        let host_end = format!("{}h0", self.bridge);
        let _ = cmd!(sh, "ip link del {host_end}")
            .quiet()
            .ignore_status()
            .run();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
