//! The activation unit run for real by bash against a temporary directory: launched detached,
//! handed the lock, falling back, recording, and holding the lock while its processes run.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xshell::{Shell, cmd};

use super::*;
use crate::deploy::{
    health::Reach,
    plan::step,
    scripts::tests::{hold_lock, remote, run, temp_base},
};

/// A step script with the prelude (so `$base` and `say` exist), as the plan makes them.
fn remote_step(scripts: &ServerScripts, name: &str, body: &str) -> Step {
    step(
        name,
        Action::Remote(scripts.wrap(&Script::new(), &format!("{body}\n"), false)),
    )
}

/// A deploy of `bbb2222` (previous `aaa1111`) whose `health gate` step runs `gate`.
fn plan(scripts: &ServerScripts, gate: &str) -> Plan {
    Plan {
        kind: "deploy",
        tag: "bbb2222".to_owned(),
        prelude: scripts.prelude(),
        prepare: Vec::new(),
        activate: vec![
            remote_step(
                scripts,
                "switch current",
                "mkdir -p \"$base/releases/bbb2222\"\necho aaa1111 >\"$base/releases/bbb2222/.previous\"\necho previous=aaa1111",
            ),
            remote_step(scripts, "health gate", gate),
        ],
        fall_back: vec![remote_step(
            scripts,
            "switch back",
            "touch \"$base/switched-back\"",
        )],
        after_success: vec![remote_step(scripts, "cleanup", "touch \"$base/cleaned\"")],
        finish: Vec::new(),
        on_server: true,
    }
}

const HEAD: &str = r#"{"kind":"deploy","tag":"bbb2222","steps":{"connect":0.25"#;

/// Runs a script with bash; stdout then stderr.
fn bash(script: &Script) -> (bool, String) {
    let (ok, out, err) = run(script);
    (ok, format!("{out}{err}"))
}

/// A gate that waits (bounded: 30 s) for the test's go-ahead, the file `go`.
/// Marks that it runs (its process exists), then waits for `go`.
const GATE_WAITING_FOR_GO: &str = ": > \"$base/gate-running\"\nfor _ in $(seq 300); do [ ! -e \"$base/go\" ] || exit 0; sleep 0.1; done\nexit 3";

/// Launches the plan's unit as the deploying machine does: under its lock, then handed over.
fn launch_handed_over(scripts: &ServerScripts, plan: &Plan) -> PathBuf {
    let client = hold_lock(&scripts.lock("the deploying machine")).unwrap();
    let dir = launch(scripts, plan);
    drop(client);
    dir
}

/// Launches the plan's unit while the caller holds the lock; returns the unit's directory.
fn launch(scripts: &ServerScripts, plan: &Plan) -> PathBuf {
    let files = unit_files(scripts, plan, HEAD).unwrap();
    let (ok, out) = bash(&scripts.launch(&files));
    assert!(ok, "launch failed:\n{out}");
    assert!(
        out.contains("unit=setsid") || out.contains("unit=systemd"),
        "{out}"
    );
    PathBuf::from(format!("{}/deploys/{}", scripts.base, scripts.run_id))
}

fn state(dir: &Path) -> String {
    fs::read_to_string(dir.with_extension("state")).unwrap_or_default()
}

/// Waits (at most 30 s) until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ended(dir: &Path) -> bool {
    !state(dir).contains("result=running")
}

fn lock_is_free(base: &Path) -> bool {
    let lock = base.join(".deploy.lock");
    let sh = Shell::new().unwrap();
    cmd!(sh, "flock -n {lock} true").quiet().run().is_ok()
}

fn last_record(base: &Path) -> serde_json::Value {
    let text = fs::read_to_string(base.join("releases.jsonl")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn a_unit_whose_gate_fails_goes_back_and_records_the_run() {
    let base = temp_base("unit-fails");
    let scripts = remote(&base.display().to_string());
    let plan = plan(
        &scripts,
        "say 'error: the release is not healthy: backend: its health check fails (unhealthy)'\nexit 3",
    );
    let dir = launch_handed_over(&scripts, &plan);
    wait_for("the unit to end", || ended(&dir));
    let outcome = Outcome::parse(&state(&dir)).unwrap();
    assert_eq!(outcome.result, "rolled-back");
    assert_eq!(outcome.previous.as_deref(), Some("aaa1111"));
    assert_eq!(
        outcome.cause(),
        "health gate: the release is not healthy: backend: its health check fails (unhealthy)"
    );
    assert!(base.join("switched-back").exists());
    assert!(
        !base.join("cleaned").exists(),
        "cleanup ran after a failure"
    );
    let record = last_record(&base);
    assert_eq!(record["result"], "rolled-back");
    assert_eq!(record["previous"], "aaa1111");
    assert_eq!(record["kind"], "deploy");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .starts_with("health gate: the release is not healthy"),
        "{record}"
    );
    let steps = record["steps"].as_object().unwrap();
    let names: Vec<&str> = steps.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["connect", "health gate", "switch back", "switch current"]
    );
    assert_eq!(steps["connect"], 0.25);
    assert_eq!(
        fs::read_to_string(base.join("releases/bbb2222/.result")).unwrap(),
        "failed\n"
    );
    let journal = fs::read_to_string(dir.with_extension("log")).unwrap();
    assert!(
        journal.contains("going back to the release that ran before")
            && journal.contains("==> result: rolled-back"),
        "{journal}"
    );
    assert!(lock_is_free(&base));
    assert!(!base.join(".deploy.lock.holder").exists());
    fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

#[test]
fn the_unit_takes_the_lock_only_when_handed_over_and_holds_it_until_it_ends() {
    let base = temp_base("unit-lock");
    let scripts = remote(&base.display().to_string());
    let plan = plan(&scripts, GATE_WAITING_FOR_GO);
    let client = hold_lock(&scripts.lock("the deploying machine")).unwrap();
    let dir = launch(&scripts, &plan);
    std::thread::sleep(Duration::from_millis(500));
    let journal = || fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
    assert!(
        !journal().contains("==> switch current"),
        "the unit ran before the lock was handed over:\n{}",
        journal()
    );
    // Another deploy meanwhile is told to wait for the unit, not given the lock.
    let other = ServerScripts {
        run_id: "2222222222222222".to_owned(),
        ..scripts.clone()
    };
    let sh = Shell::new().unwrap();
    let mut waiting = Command::from(cmd!(sh, "bash -s"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    waiting
        .stdin
        .as_mut()
        .unwrap()
        .write_all(other.lock("another deploy").render().as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(waiting.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with(&format!(
            "waiting\tthe activation of run {}",
            scripts.run_id
        )),
        "{line}"
    );
    waiting.kill().unwrap();
    waiting.wait().unwrap();

    drop(client);
    wait_for("the unit to take the lock", || {
        journal().contains("==> health gate")
    });
    assert!(!lock_is_free(&base), "the lock is free while the unit runs");
    let holder = fs::read_to_string(base.join(".deploy.lock.holder")).unwrap();
    assert!(
        holder.starts_with(&format!("id={}\nactivation of bbb2222", scripts.run_id)),
        "{holder}"
    );
    fs::write(base.join("go"), "").unwrap();
    wait_for("the unit to end", || ended(&dir));
    assert_eq!(Outcome::parse(&state(&dir)).unwrap().result, "ok");
    assert!(base.join("cleaned").exists(), "cleanup did not run");
    assert_eq!(last_record(&base)["result"], "ok");
    assert!(lock_is_free(&base));
    fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

#[test]
fn a_killed_unit_keeps_the_lock_while_its_step_still_runs() {
    let base = temp_base("unit-killed");
    let scripts = remote(&base.display().to_string());
    let dir = launch_handed_over(&scripts, &plan(&scripts, GATE_WAITING_FOR_GO));
    // The gate's own process, not the journal line the unit prints before starting it: a
    // unit killed in between has no child left to hold the lock (a flaky failure in CI).
    wait_for("the gate to start", || base.join("gate-running").exists());
    let pid = fs::read_to_string(dir.with_extension("pid")).unwrap();
    let pid = pid.trim();
    let sh = Shell::new().unwrap();
    cmd!(sh, "kill -KILL {pid}").quiet().run().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lock_is_free(&base),
        "the lock went with the unit while its gate still runs"
    );
    let (_, status) = bash(&scripts.status());
    assert!(
        status.contains("ended without a result (the unit died)"),
        "{status}"
    );
    fs::write(base.join("go"), "").unwrap();
    wait_for("the orphaned gate to end and free the lock", || {
        lock_is_free(&base)
    });
    fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

#[test]
fn unit_files_refuse_steps_that_cannot_run_on_the_server() {
    let scripts = remote("/opt/timemanager");
    let mut plan = plan(&scripts, "true");
    plan.after_success.push(step(
        "connect",
        Action::Local(crate::deploy::plan::Local::Connect),
    ));
    let err = unit_files(&scripts, &plan, HEAD).unwrap_err();
    assert!(format!("{err:#}").contains("`connect` runs on the deploying machine"));
}

#[test]
fn the_record_head_is_left_open_inside_steps() {
    let mut record = serde_json::Map::new();
    record.insert("tag".to_owned(), "bbb2222".into());
    record.insert("result".to_owned(), "ok".into());
    record.insert("previous".to_owned(), serde_json::Value::Null);
    record.insert("steps".to_owned(), serde_json::json!({"connect": 0.25}));
    let head = record_head(record).unwrap();
    assert_eq!(head, r#"{"tag":"bbb2222","steps":{"connect":0.25"#);
    let closed = format!(r#"{head},"gate":1.5}},"result":"ok"}}"#);
    let value: serde_json::Value = serde_json::from_str(&closed).unwrap();
    assert_eq!(value["steps"]["gate"], 1.5);
}

#[test]
fn the_gate_reaches_the_url_as_the_flags_say() {
    let gate = |url: &str, reach: Reach| Gate {
        services: vec!["backend".to_owned()],
        url: url.to_owned(),
        timeout: Duration::from_secs(60),
        reach,
    };
    let pinned = Reach::new(true, Some("tm.localhost:127.0.0.1")).unwrap();
    assert_eq!(
        curl_args(&gate("https://tm.localhost/api/health", pinned.clone())),
        ["--insecure", "--resolve", "tm.localhost:443:127.0.0.1"]
    );
    assert_eq!(
        curl_args(&gate("http://tm.localhost:8080/api/health", pinned)),
        ["--insecure", "--resolve", "tm.localhost:8080:127.0.0.1"]
    );
    let v6 = Reach::new(false, Some("tm.localhost:[::1]")).unwrap();
    assert_eq!(
        curl_args(&gate("https://tm.localhost/api/health", v6)),
        ["--resolve", "tm.localhost:443:[::1]"]
    );
    assert!(curl_args(&gate("https://tm.example.com/api/health", Reach::default())).is_empty());
}
