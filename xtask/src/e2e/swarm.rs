//! `cargo xtask e2e --mode swarm`: `swarm-setup` and `status --mode swarm` over ssh against
//! three lab hosts (`harness/swarm_lab.rs`): a manager and two workers, each its own network
//! namespace, `dockerd` and sshd on a lab bridge. Run by this very binary, as a user would.
//!
//! Checked: the swarm forms (three nodes Ready, two workers), the database label is on the
//! manager only, the join token is in no process's argv while the setup runs (every token
//! starts with `SWMTKN-`), a second setup changes nothing, `status --mode swarm` lists the
//! nodes, and the lab leaves no namespace, link, mount or file behind.
//!
//! Then the issue's deploy scenarios on that swarm (`swarm/deploys.rs`): releases A, B and a
//! failing C deployed with `deploy --mode swarm` under load through Traefik, a worker lost and
//! back, `rollback --mode swarm`, and no secret in any argv or service spec.

mod deploys;

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::{
    e2e::probes::Scanner,
    harness::swarm_lab::SwarmLab,
    steps::{Steps, format_duration},
};

/// Runs the swarm scenario; the lab is removed before this returns, also on failure.
pub(crate) fn run(sh: &Shell) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut steps = Steps::default();
    let lab = steps.run("lab: 3 namespaces, dockerd and sshd each, a bridge", || {
        SwarmLab::start(sh, 3)
    })?;
    let (bridge, dir) = (lab.bridge.clone(), lab.dir.clone());
    let result = scenario(sh, &lab, &mut steps);
    drop(lab);
    let leftovers = SwarmLab::leftovers(sh, &bridge, &dir);
    steps.print_summary();
    let report = result?;
    ensure!(
        leftovers.is_empty(),
        "the swarm lab left behind: {}",
        leftovers.join(", ")
    );
    println!("{report}");
    println!(
        "swarm e2e: passed in {}, nothing left behind",
        format_duration(started.elapsed())
    );
    Ok(())
}

fn scenario(sh: &Shell, lab: &SwarmLab, steps: &mut Steps) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding this xtask's binary")?;
    let manager = lab.nodes[0].addr.clone();
    let workers: Vec<String> = lab.nodes[1..].iter().map(|n| n.addr.clone()).collect();
    let key = &lab.client_key;
    let known = &lab.known_hosts;
    let mut ssh_args = vec![
        "--host".to_owned(),
        manager.clone(),
        "--identity".to_owned(),
        key.display().to_string(),
        "--known-hosts".to_owned(),
        known.display().to_string(),
    ];
    let mut setup_args = ssh_args.clone();
    for worker in &workers {
        setup_args.push("--worker".to_owned());
        setup_args.push(worker.clone());
    }
    setup_args.push("--advertise-addr".to_owned());
    setup_args.push(manager.clone());
    let mut report = String::new();

    let running = Arc::new(AtomicBool::new(true));
    let scanner = Scanner::start(vec!["SWMTKN-".to_owned()], running);
    let setup = Instant::now();
    let args = &setup_args;
    let out = steps.run("swarm-setup: init, join 2 workers, label", || {
        cmd!(sh, "{exe} swarm-setup {args...}")
            .quiet()
            .ignore_status()
            .output()
            .context("running swarm-setup")
    })?;
    let setup_time = setup.elapsed();
    let scan = scanner.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "swarm-setup failed:\n{stderr}");
    ensure!(
        !stderr.contains("SWMTKN-") && !String::from_utf8_lossy(&out.stdout).contains("SWMTKN-"),
        "swarm-setup printed the join token"
    );
    ensure!(
        scan.hits.is_empty(),
        "a join token was in a process's argv:\n{}",
        scan.hits.join("\n")
    );
    report.push_str(&format!(
        "1. swarm-setup of 1 manager + 2 workers over ssh: {} ({} argv scans of {} processes, no join token)\n",
        format_duration(setup_time),
        scan.scans,
        scan.processes
    ));

    let docker = lab.docker(0)?;
    let format = "{{.Hostname}}\t{{.Status}}\t{{.ManagerStatus}}";
    let nodes = steps.run("the swarm has 3 ready nodes", || {
        cmd!(docker, "docker node ls --format {format}")
            .quiet()
            .read()
            .context("docker node ls on the manager")
    })?;
    let ready = nodes.lines().filter(|l| l.contains("\tReady")).count();
    let managers = nodes
        .lines()
        .filter(|l| l.ends_with("Leader") || l.ends_with("Reachable"))
        .count();
    ensure!(
        ready == 3 && managers == 1,
        "expected 3 ready nodes, 1 manager; the manager lists:\n{nodes}"
    );
    let ids = cmd!(docker, "docker node ls -q").quiet().read()?;
    let mut labelled = Vec::new();
    let format = r#"{{index .Spec.Labels "timemanager.db"}} {{.Spec.Role}}"#;
    for id in ids.lines() {
        let label = cmd!(docker, "docker node inspect --format {format} {id}")
            .quiet()
            .read()?;
        if label.starts_with("true") {
            labelled.push(label);
        }
    }
    ensure!(
        labelled.len() == 1 && labelled[0].ends_with("manager"),
        "timemanager.db=true must be on the manager only: {labelled:?}"
    );
    report.push_str("2. 3 nodes Ready, 1 manager; timemanager.db=true on the manager only\n");

    let again = Instant::now();
    steps.run("swarm-setup again: nothing changes", || {
        cmd!(sh, "{exe} swarm-setup {args...}")
            .quiet()
            .run()
            .context("the second swarm-setup failed")
    })?;
    let after = cmd!(docker, "docker node ls -q").quiet().read()?;
    ensure!(
        after.lines().count() == 3,
        "a second swarm-setup changed the nodes:\n{after}"
    );
    report.push_str(&format!(
        "3. swarm-setup again: idempotent, {}\n",
        format_duration(again.elapsed())
    ));

    // The nodes share this machine's file system: the lab's own base directory, not /opt.
    let base = lab.dir.join("server");
    ssh_args.extend([
        "--mode".to_owned(),
        "swarm".to_owned(),
        "--remote-dir".to_owned(),
        base.display().to_string(),
    ]);
    let args = &ssh_args;
    let status = steps.run("status --mode swarm over ssh", || {
        cmd!(sh, "{exe} status {args...}")
            .quiet()
            .read()
            .context("status --mode swarm failed")
    })?;
    ensure!(
        status.matches("Ready").count() == 3,
        "status --mode swarm does not list the 3 nodes:\n{status}"
    );
    report.push_str("4. status --mode swarm lists the 3 nodes\n");
    for line in deploys::run(sh, lab, steps, &base)? {
        report.push_str(&line);
        report.push('\n');
    }
    Ok(report)
}
