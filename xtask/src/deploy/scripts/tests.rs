//! Tests of the remote scripts: bash syntax, shellcheck, secrets only inside here-documents,
//! and the release bookkeeping run for real against a temporary directory (no ssh, no Docker).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use xshell::{Shell, cmd};

use super::*;
use crate::deploy::{
    secrets::Secret,
    settings::{ComposeChoice, Credentials, EnvLine, EnvValue},
    upload::{OVERRIDE_FILE, Upload},
};

/// The scripts of one run against `base`, compose detected on the server.
pub(crate) fn remote(base: &str) -> ServerScripts {
    ServerScripts {
        base: base.to_owned(),
        project: "timemanager".to_owned(),
        run_id: "0123456789abcdef".to_owned(),
        compose: ComposeChoice::Detect,
    }
}

fn env_lines() -> Vec<EnvLine> {
    vec![
        EnvLine {
            name: "DOMAIN",
            value: EnvValue::Plain("tm.example.com".to_owned()),
        },
        EnvLine {
            name: "POSTGRES_PASSWORD",
            value: EnvValue::Secret(Secret::new("pg secret #1 $HOME `x`")),
        },
    ]
}

fn credentials() -> Credentials {
    Credentials::new("octocat", "ghp_registrytoken123", "the test")
}

fn images() -> Vec<ImageLine> {
    ["backend", "frontend"]
        .iter()
        .map(|service| ImageLine {
            service: (*service).to_owned(),
            reference: format!("ghcr.io/o/r/{service}:abc1234"),
            repository: format!("ghcr.io/o/r/{service}"),
        })
        .collect()
}

/// Every script the deploy and the other commands can send.
fn all_scripts() -> Vec<(&'static str, Script)> {
    let r = remote("/opt/timemanager");
    let profiles = vec!["monitoring".to_owned()];
    let services = vec!["backend".to_owned(), "frontend".to_owned()];
    let v1 = ServerScripts {
        compose: ComposeChoice::V1,
        ..r.clone()
    };
    vec![
        ("probe", r.probe()),
        ("probe with compose v1 forced", v1.probe()),
        ("lock", r.lock("octocat (deploy of abc1234, it's me)")),
        (
            "create-admin",
            r.create_admin(
                "root@example.com",
                Some("root"),
                &Secret::new("pg secret #1 $HOME `x`"),
            ),
        ),
        (
            "upload",
            r.upload(
                "abc1234",
                &Upload {
                    tar: b"not really a tar".to_vec(),
                    n_files: 2,
                    has_override: true,
                },
            ),
        ),
        ("env", r.write_env("abc1234", &env_lines(), &profiles)),
        (
            "pull",
            r.pull("abc1234", "ghcr.io", Some(&credentials()), &images()),
        ),
        (
            "pull anonymous",
            r.pull("abc1234", "ghcr.io", None, &images()),
        ),
        ("switch", r.switch("abc1234")),
        ("switch back", r.switch_back("abc1234")),
        ("start", r.start(&profiles, Duration::from_secs(60))),
        ("container states", r.container_states()),
        ("failing logs", r.failing_logs(&services, 40)),
        ("record", r.record("abc1234", r#"{"it's":"json"}"#, "ok")),
        ("cleanup", r.cleanup()),
        ("list releases", r.list_releases()),
        ("migration state", r.migration_state("abc1234")),
        ("database state", r.database_state()),
        ("snapshot", r.snapshot(10)),
        ("migrate", r.migrate("abc1234")),
        ("list snapshots", r.list_snapshots()),
        (
            "restore",
            r.restore("20261201T120000Z-abc1234.pgdump", &["backend", "frontend"]),
        ),
        ("status", r.status()),
        ("logs", r.logs("backend", 100, true)),
        (
            "ensure images",
            r.ensure_images("abc1234", Some(("ghcr.io", &credentials()))),
        ),
        ("ensure images anonymous", r.ensure_images("abc1234", None)),
        (
            "server setup",
            server_setup("/opt/timemanager", 22, "deploy"),
        ),
        (
            "health gate",
            r.gate(&crate::deploy::plan::Gate {
                services: services.clone(),
                url: "https://tm.example.com/api/health".to_owned(),
                timeout: Duration::from_secs(60),
                reach: crate::deploy::health::Reach::new(true, Some("tm.example.com:127.0.0.1"))
                    .unwrap(),
            }),
        ),
        ("follow", r.follow()),
        (
            "launch",
            r.launch(&[("1.sh".to_owned(), "echo 'one step'".to_owned())]),
        ),
        ("activation unit", activation_unit()),
    ]
}

/// The driver of the sample deploy plan's activation unit.
fn activation_unit() -> Script {
    let plan = crate::deploy::tests::sample_plan(false);
    let files =
        crate::deploy::activation::unit_files(&remote("/opt/timemanager"), &plan, r#"{"steps":{"#)
            .unwrap();
    let (_, driver) = files
        .iter()
        .find(|(name, _)| name == "activate.sh")
        .unwrap();
    let mut script = Script::new();
    script.text(driver);
    script
}

#[test]
fn every_script_is_valid_bash() {
    let sh = Shell::new().unwrap();
    for (name, script) in all_scripts() {
        let text = script.render();
        let checked = cmd!(sh, "bash -n")
            .stdin(&text)
            .quiet()
            .ignore_stderr()
            .run();
        assert!(
            checked.is_ok(),
            "`{name}` is not valid bash:\n{}",
            script.masked()
        );
    }
}

/// shellcheck on the files as editors see them, and on every script as the server gets it.
/// A missing shellcheck fails: `cargo xtask ci` installs it before the tests.
#[test]
fn every_script_passes_shellcheck() {
    shellcheck(FILES, &all_scripts());
}

/// Runs shellcheck on each of `files` (checked equal to the file compiled in) and each of
/// `scripts`; the swarm mode's tests use it for theirs.
pub(crate) fn shellcheck<N: AsRef<str>>(files: &[(&str, &str)], scripts: &[(N, Script)]) {
    let sh = Shell::new().unwrap();
    assert!(
        crate::provision::find_program("shellcheck").is_some(),
        "shellcheck is not installed: `apt-get install shellcheck`"
    );
    let dir = crate::project::root().join("xtask/src/deploy/scripts");
    for (name, text) in files {
        let path = dir.join(name);
        assert_eq!(
            &std::fs::read_to_string(&path).unwrap(),
            text,
            "{} is not the file compiled in",
            path.display()
        );
        // SC2154 (variable never assigned): Rust prepends the values a file reads, and
        // the whole scripts below are checked with them.
        let out = cmd!(
            sh,
            "shellcheck --shell=bash --severity=warning --exclude=SC2154 {path}"
        )
        .quiet()
        .ignore_status()
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "shellcheck on {}:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for (name, script) in scripts {
        let out = cmd!(sh, "shellcheck --shell=bash --severity=warning -")
            .stdin(script.render())
            .quiet()
            .ignore_status()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shellcheck on `{}`:\n{}",
            name.as_ref(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `secrets` are not in the script as people see it, and, as the server gets it, only inside
/// quoted here-documents (never on a command line).
pub(crate) fn assert_secrets_only_in_heredocs(name: &str, script: &Script, secrets: &[&str]) {
    let rendered = script.render();
    let masked = script.masked();
    for secret in secrets {
        assert!(!masked.contains(secret), "`{name}` shows a secret");
        let mut in_heredoc: Option<String> = None;
        for line in rendered.lines() {
            match &in_heredoc {
                Some(delimiter) if line == delimiter => in_heredoc = None,
                Some(_) => {}
                None => {
                    assert!(
                        !line.contains(secret),
                        "`{name}` has a secret outside a here-document: {line}"
                    );
                    if let Some(at) = line.find("<<'") {
                        let rest = &line[at + 3..];
                        in_heredoc = Some(rest[..rest.find('\'').unwrap()].to_owned());
                    }
                }
            }
        }
        assert!(in_heredoc.is_none(), "`{name}`: unterminated here-document");
    }
}

#[test]
fn secrets_are_only_inside_quoted_here_documents_and_masked_for_display() {
    for (name, script) in all_scripts() {
        assert_secrets_only_in_heredocs(
            name,
            &script,
            &["pg secret #1 $HOME `x`", "ghp_registrytoken123"],
        );
        let rendered = script.render();
        // A cut connection must not run half a script: `main` is the last line.
        let last = rendered.lines().last().unwrap();
        assert!(
            last == "main </dev/null" || (name == "lock" && last == "main"),
            "`{name}` ends with `{last}`"
        );
    }
    let env = remote("/b").write_env("abc1234", &env_lines(), &[]);
    assert!(
        env.masked()
            .contains("POSTGRES_PASSWORD='<secret POSTGRES_PASSWORD>'")
    );
    assert!(
        env.render()
            .contains("POSTGRES_PASSWORD='pg secret #1 $HOME `x`'")
    );
}

#[test]
fn values_are_quoted() {
    let r = remote("/opt/time manager");
    assert!(r.prelude().contains("base='/opt/time manager'\n"));
    let lock = r.lock("it's $(whoami)").render();
    assert!(lock.contains(r#"'it'\''s $(whoami)'"#), "{lock}");
}

/// Runs a script with bash, as the server would; returns (success, stdout, stderr).
pub(crate) fn run(script: &Script) -> (bool, String, String) {
    let sh = Shell::new().unwrap();
    let out = cmd!(sh, "bash -s")
        .stdin(script.render())
        .quiet()
        .ignore_status()
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `docker` on PATH that answers like Docker would for two containers of the project and
/// a pull, and logs its arguments: remote scripts run for real without a Docker engine.
pub(crate) struct FakeDocker {
    dir: PathBuf,
}

pub(crate) struct Output {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

const FAKE_DOCKER: &str = r#"#!/bin/bash
printf '%s\n' "$*" >>"${0%/*}/calls"
# What compose prints for the switch: every running container has the release's config hash.
compose_answers() {
  case $1 in
    *" config --hash="*) echo "${1##*--hash=} fakehash" ;;
    *" config --services"*) printf 'postgres\nbackend\nfrontend\ntraefik\n' ;;
  esac
}
case "$1 $2" in
  "compose version") echo "Docker Compose version v2.27.0" ;;
  "version --format") echo 27.0.1 ;;
  "ps -aq") printf 'c1\nc2\n' ;;
  "inspect --format")
    # The switch reads the config hash compose labels a container with: the release's.
    case $3 in *config-hash*) echo fakehash && exit 0 ;; esac
    printf 'backend\trunning\thealthy\t0\tghcr.io/o/r/backend:abc1234\n'
    printf 'frontend\trestarting\tstarting\t3\tghcr.io/o/r/frontend:abc1234\n'
    ;;
  "image inspect") ref=${!#} && printf '%s@sha256:feed\n' "${ref%:*}" ;;
  "login "*) cat >/dev/null ;;
  "compose -p") compose_answers "$*" ;;
  "logout "*) ;;
  *) echo "fake docker: unexpected $*" >&2 && exit 1 ;;
esac
"#;

/// Compose v1, beside the v2 plugin the fake `docker` has: logged with its own name.
const FAKE_DOCKER_COMPOSE: &str = r#"#!/bin/bash
printf 'docker-compose %s\n' "$*" >>"${0%/*}/calls"
case "$*" in
  *" config --hash="*) all="$*" && echo "${all##*--hash=} fakehash" ;;
  *" config --services"*) printf 'postgres\nbackend\nfrontend\ntraefik\n' ;;
esac
"#;

impl FakeDocker {
    pub(crate) fn new(name: &str) -> FakeDocker {
        let dir = std::env::temp_dir().join(format!("xtask-docker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (program, text) in [
            ("docker", FAKE_DOCKER),
            ("docker-compose", FAKE_DOCKER_COMPOSE),
        ] {
            let path = dir.join(program);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeDocker { dir }
    }

    pub(crate) fn run(&self, script: &Script) -> Output {
        let sh = Shell::new().unwrap();
        let path = format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap());
        let out = cmd!(sh, "bash -s")
            .env("PATH", path)
            .stdin(script.render())
            .quiet()
            .ignore_status()
            .output()
            .unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every call, one line each.
    pub(crate) fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default()
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tar_of(files: &[(&str, &str)]) -> Upload {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, text.as_bytes())
            .unwrap();
    }
    Upload {
        tar: builder.into_inner().unwrap(),
        n_files: files.len(),
        has_override: files.iter().any(|(name, _)| *name == OVERRIDE_FILE),
    }
}

/// The lock script, held by a running `bash` until its stdin closes.
pub(crate) struct Held {
    pub(crate) child: std::process::Child,
}

pub(crate) fn hold_lock(script: &Script) -> Result<Held, String> {
    let sh = Shell::new().unwrap();
    let mut child = Command::from(cmd!(sh, "bash -s"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(script.render().as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim_end() == "locked" {
        Ok(Held { child })
    } else {
        drop(child.stdin.take());
        child.wait().unwrap();
        Err(line)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

pub(crate) fn temp_base(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-scripts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("timemanager")
}

fn link(path: &Path) -> String {
    std::fs::read_link(path).unwrap().display().to_string()
}

#[test]
fn releases_lock_upload_env_switch_and_back_on_a_real_directory() {
    let base = temp_base("releases");
    let r = remote(&base.display().to_string());
    let files_a = tar_of(&[
        ("docker-compose.prod.yml", "services: {}\n"),
        ("infrastructure/traefik/dynamic.yml", "a\n"),
    ]);
    let files_b = tar_of(&[
        ("docker-compose.prod.yml", "services: {}\n"),
        ("infrastructure/traefik/dynamic.yml", "b\n"),
    ]);

    // Without the lock, mutating steps refuse to run.
    let (ok, _, err) = run(&r.upload("aaaaaaa", &files_a));
    assert!(
        !ok && err.contains("no longer holds the deploy lock"),
        "{err}"
    );

    let held = hold_lock(&r.lock("tester (deploy of aaaaaaa)")).unwrap();
    let other = ServerScripts {
        run_id: "fedcba9876543210".to_owned(),
        ..r.clone()
    };
    let refused = hold_lock(&other.lock("someone else")).err().unwrap();
    assert_eq!(refused.trim_end(), "held\ttester (deploy of aaaaaaa)");
    // Another run's steps cannot use this run's lock.
    let (ok, _, _) = run(&other.upload("aaaaaaa", &files_a));
    assert!(!ok);

    for (tag, files) in [("aaaaaaa", &files_a), ("bbbbbbb", &files_b)] {
        let (ok, _, err) = run(&r.upload(tag, files));
        assert!(ok, "{err}");
        let (ok, _, err) = run(&r.write_env(tag, &env_lines(), &[]));
        assert!(ok, "{err}");
        std::fs::write(
            base.join(format!("releases/{tag}/images")),
            "backend\tref\tsha256:1\n",
        )
        .unwrap();
    }
    let env = base.join("releases/aaaaaaa/.env");
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "DOMAIN='tm.example.com'\nPOSTGRES_PASSWORD='pg secret #1 $HOME `x`'\n"
    );

    // The same tag with the same files is reused; with other files it is refused.
    let (ok, _, err) = run(&r.upload("aaaaaaa", &files_a));
    assert!(ok && err.contains("reusing it"), "{err}");
    let (ok, _, err) = run(&r.upload("aaaaaaa", &files_b));
    assert!(!ok && err.contains("other files"), "{err}");

    let (ok, out, err) = run(&r.switch("aaaaaaa"));
    assert!(ok, "{err}");
    assert_eq!(out, "previous=\n");
    assert_eq!(parse_facts(&out), [Fact::Previous(String::new())]);
    let (ok, out, _) = run(&r.switch("bbbbbbb"));
    assert!(ok);
    assert_eq!(parse_facts(&out), [Fact::Previous("aaaaaaa".to_owned())]);
    assert_eq!(link(&base.join("current")), "releases/bbbbbbb");
    for name in ["docker-compose.prod.yml", ".env", "infrastructure"] {
        assert_eq!(link(&base.join(name)), format!("current/{name}"));
    }
    assert_eq!(
        std::fs::read_to_string(base.join("infrastructure/traefik/dynamic.yml")).unwrap(),
        "b\n"
    );

    let (ok, out, err) = run(&r.switch_back("bbbbbbb"));
    assert!(ok, "{err}");
    assert_eq!(
        parse_facts(&out),
        [Fact::Info {
            key: "current".to_owned(),
            value: "aaaaaaa".to_owned()
        }]
    );
    assert_eq!(link(&base.join("current")), "releases/aaaaaaa");
    let (ok, _, err) = run(&r.switch_back("aaaaaaa"));
    assert!(!ok && err.contains("no previous release"), "{err}");

    let (ok, _, err) = run(&r.record("bbbbbbb", r#"{"result":"it's failed"}"#, "failed"));
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(base.join("releases.jsonl")).unwrap(),
        "{\"result\":\"it's failed\"}\n"
    );

    let (ok, out, _) = run(&r.list_releases());
    assert!(ok);
    let releases = crate::deploy::releases::parse_releases(&out);
    assert_eq!(releases.current, "aaaaaaa");
    assert_eq!(releases.domain, "tm.example.com");
    assert_eq!(releases.lock.as_deref(), Some("tester (deploy of aaaaaaa)"));
    let b = releases
        .releases
        .iter()
        .find(|r| r.tag == "bbbbbbb")
        .unwrap();
    assert_eq!(
        (b.result.as_str(), b.previous.as_str()),
        ("failed", "aaaaaaa")
    );

    drop(held);
    assert!(
        !base.join(".deploy.lock.holder").exists(),
        "the holder file outlived the lock"
    );
    let (ok, out, _) = run(&r.list_releases());
    assert!(ok && !out.contains("lock\t"), "{out}");
    let again = hold_lock(&other.lock("someone else"));
    assert!(again.is_ok(), "the lock was not released");
    drop(again);
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

#[test]
fn a_killed_lock_holder_leaves_no_lock() {
    let base = temp_base("killed");
    let r = remote(&base.display().to_string());
    let mut held = hold_lock(&r.lock("doomed")).unwrap();
    held.child.kill().unwrap();
    held.child.wait().unwrap();
    let next = ServerScripts {
        run_id: "1111111111111111".to_owned(),
        ..r.clone()
    };
    let again = hold_lock(&next.lock("next"));
    assert!(
        again.is_ok(),
        "a killed holder kept the lock: {:?}",
        again.err()
    );
    drop(again);
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

#[test]
fn secrets_are_rendered_for_the_server_and_masked_for_people() {
    let mut script = Script::new();
    script
        .line("cat <<'EOF'")
        .text("PASSWORD='")
        .secret("POSTGRES_PASSWORD", &Secret::new("s3cret"))
        .line("'")
        .line("EOF");
    assert!(script.has_secrets());
    assert_eq!(script.render(), "cat <<'EOF'\nPASSWORD='s3cret'\nEOF\n");
    assert_eq!(
        script.masked(),
        "cat <<'EOF'\nPASSWORD='<secret POSTGRES_PASSWORD>'\nEOF\n"
    );
}

#[test]
fn quoting() {
    assert_eq!(quote("/opt/timemanager"), "/opt/timemanager");
    assert_eq!(quote("a b"), "'a b'");
    assert_eq!(quote("it's"), r"'it'\''s'");
    assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
    assert_eq!(quote(""), "''");
}

#[test]
fn base64_is_wrapped_like_coreutils() {
    assert_eq!(base64(b"foobar"), "Zm9vYmFy\n");
    let long = base64(&[0xff; 60]);
    assert_eq!(long.lines().next().unwrap().len(), 76);
    assert_eq!(long.lines().count(), 2);
    assert_eq!(base64(b""), "");
}

/// The probe and the pull run for real (a fake `docker`), their facts read by `parse_facts`.
#[test]
fn probe_and_pull_print_the_facts_the_deploy_reads() {
    let fake = FakeDocker::new("facts");
    let base = temp_base("facts");
    let r = remote(&base.display().to_string());
    std::fs::create_dir_all(base.join("releases/abc1234")).unwrap();
    let out = fake.run(&r.probe());
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        parse_facts(&out.stdout),
        [
            Fact::Info {
                key: "docker".to_owned(),
                value: "27.0.1".to_owned()
            },
            Fact::Info {
                key: "compose".to_owned(),
                value: "docker compose".to_owned()
            },
            Fact::Info {
                key: "current".to_owned(),
                value: String::new()
            },
        ]
    );

    let held = hold_lock(&r.lock("tester")).unwrap();
    let out = fake.run(&r.pull("abc1234", "ghcr.io", Some(&credentials()), &images()));
    assert!(out.ok, "{}", out.stderr);
    let digest = |service: &str| Fact::Digest {
        service: service.to_owned(),
        digest: "sha256:feed".to_owned(),
    };
    assert_eq!(
        parse_facts(&out.stdout),
        [digest("backend"), digest("frontend")]
    );
    assert_eq!(
        std::fs::read_to_string(base.join("releases/abc1234/images")).unwrap(),
        "backend\tghcr.io/o/r/backend:abc1234\tsha256:feed\n\
         frontend\tghcr.io/o/r/frontend:abc1234\tsha256:feed\n"
    );
    let calls = fake.calls();
    assert!(
        calls.contains("login ghcr.io --username octocat --password-stdin")
            && !calls.contains("ghp_registrytoken123"),
        "{calls}"
    );
    assert!(calls.contains("logout ghcr.io"), "{calls}");
    assert!(calls.contains(" pull --quiet backend frontend"), "{calls}");
    drop(held);
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

#[test]
fn facts_are_read_from_their_lines_only() {
    assert_eq!(
        parse_facts("previous=aaaaaaa\nnoise=1\nsaid something\ncurrent=bbbbbbb\n"),
        [
            Fact::Previous("aaaaaaa".to_owned()),
            Fact::Info {
                key: "current".to_owned(),
                value: "bbbbbbb".to_owned()
            },
        ]
    );
}

/// `TM_COMPOSE` picks compose v1 or v2 even when the server has both; by default v2 wins.
/// Every script that runs compose (pull, start, status) runs the chosen one.
#[test]
fn the_forced_compose_runs_every_compose_command() {
    let base = temp_base("compose-choice");
    std::fs::create_dir_all(base.join("releases/abc1234")).unwrap();
    std::fs::write(base.join("releases/abc1234/docker-compose.prod.yml"), "").unwrap();
    std::os::unix::fs::symlink("releases/abc1234", base.join("current")).unwrap();
    std::os::unix::fs::symlink(
        "current/docker-compose.prod.yml",
        base.join("docker-compose.prod.yml"),
    )
    .unwrap();
    for (choice, shown, call) in [
        (
            ComposeChoice::Detect,
            "docker compose",
            "compose -p timemanager",
        ),
        (
            ComposeChoice::V2,
            "docker compose",
            "compose -p timemanager",
        ),
        (
            ComposeChoice::V1,
            "docker-compose",
            "docker-compose -p timemanager",
        ),
    ] {
        let fake = FakeDocker::new("compose-choice");
        let r = ServerScripts {
            compose: choice,
            ..remote(&base.display().to_string())
        };
        let out = fake.run(&r.probe());
        assert!(out.ok, "{choice:?}: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!("compose={shown}\n")),
            "{choice:?}: {}",
            out.stdout
        );
        let held = hold_lock(&r.lock("tester")).unwrap();
        for script in [
            r.pull("abc1234", "ghcr.io", None, &images()),
            r.start(&["monitoring".to_owned()], Duration::from_secs(60)),
            r.status(),
        ] {
            let out = fake.run(&script);
            assert!(out.ok, "{choice:?}: {}", out.stderr);
        }
        drop(held);
        let calls = fake.calls();
        let compose_calls: Vec<&str> = calls
            .lines()
            .filter(|l| l.contains(" -p timemanager "))
            .collect();
        // pull; the config hashes of backend and frontend, up; ps.
        assert_eq!(compose_calls.len(), 5, "{choice:?}: {calls}");
        for line in compose_calls {
            assert!(line.starts_with(call), "{choice:?}: {calls}");
        }
        assert!(
            calls.contains(" --profile monitoring up -d --remove-orphans\n"),
            "{calls}"
        );
    }
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

/// A release with a lab's override: uploaded, compared on a re-upload, added to every
/// compose command with `-f`, linked next to the compose file while it is current.
#[test]
fn a_lab_override_is_uploaded_used_and_linked_while_current() {
    let fake = FakeDocker::new("override");
    let base = temp_base("override");
    let r = remote(&base.display().to_string());
    let prod = ("docker-compose.prod.yml", "services: {}\n");
    let infra = ("infrastructure/traefik/dynamic.yml", "a\n");
    let lab = tar_of(&[
        prod,
        infra,
        (
            OVERRIDE_FILE,
            "services: {postgres-backup: {profiles: [lab]}}\n",
        ),
    ]);
    let other_lab = tar_of(&[prod, infra, (OVERRIDE_FILE, "services: {}\n")]);
    let plain = tar_of(&[prod, infra]);
    assert!(r.upload("aaaaaaa", &lab).masked().contains(&format!(
        "docker-compose.prod.yml, {OVERRIDE_FILE} (a lab's override) and infrastructure/: 3 files"
    )));
    let held = hold_lock(&r.lock("tester")).unwrap();
    for (tag, files) in [("aaaaaaa", &lab), ("bbbbbbb", &plain)] {
        let (ok, _, err) = run(&r.upload(tag, files));
        assert!(ok, "{err}");
        let (ok, _, err) = run(&r.write_env(tag, &env_lines(), &[]));
        assert!(ok, "{err}");
        std::fs::write(
            base.join(format!("releases/{tag}/images")),
            "backend\tref\tsha256:1\n",
        )
        .unwrap();
    }
    // The same tag must come with the same override, or none if it had none.
    let (ok, _, err) = run(&r.upload("aaaaaaa", &lab));
    assert!(ok && err.contains("reusing it"), "{err}");
    for (tag, files) in [
        ("aaaaaaa", &other_lab),
        ("aaaaaaa", &plain),
        ("bbbbbbb", &lab),
    ] {
        let (ok, _, err) = run(&r.upload(tag, files));
        assert!(!ok && err.contains("other files"), "{tag}: {err}");
    }

    let rel = |tag: &str| base.join("releases").join(tag).display().to_string();
    let out = fake.run(&r.pull("aaaaaaa", "ghcr.io", None, &images()));
    assert!(out.ok, "{}", out.stderr);
    let out = fake.run(&r.pull("bbbbbbb", "ghcr.io", None, &images()));
    assert!(out.ok, "{}", out.stderr);
    let calls = fake.calls();
    let pulls: Vec<&str> = calls.lines().filter(|l| l.contains(" pull ")).collect();
    let a = rel("aaaaaaa");
    assert!(
        pulls[0].contains(&format!(
            "-f {a}/docker-compose.prod.yml -f {a}/{OVERRIDE_FILE} pull"
        )),
        "{}",
        pulls[0]
    );
    assert!(!pulls[1].contains(OVERRIDE_FILE), "{}", pulls[1]);

    let link_path = base.join(OVERRIDE_FILE);
    let (ok, _, err) = run(&r.switch("aaaaaaa"));
    assert!(ok, "{err}");
    assert_eq!(link(&link_path), format!("current/{OVERRIDE_FILE}"));
    // `compose` (through the base directory's links) uses it too.
    let out = fake.run(&r.start(&[], Duration::from_secs(60)));
    assert!(out.ok, "{}", out.stderr);
    let base_dir = base.display().to_string();
    assert!(
        fake.calls().contains(&format!(
            "-f {base_dir}/docker-compose.prod.yml -f {base_dir}/{OVERRIDE_FILE} up -d --remove-orphans"
        )),
        "{}",
        fake.calls()
    );
    let (ok, _, err) = run(&r.switch("bbbbbbb"));
    assert!(ok, "{err}");
    assert!(
        std::fs::symlink_metadata(&link_path).is_err(),
        "a release without an override left the link"
    );
    let (ok, _, err) = run(&r.switch_back("bbbbbbb"));
    assert!(ok, "{err}");
    assert_eq!(link(&link_path), format!("current/{OVERRIDE_FILE}"));
    drop(held);
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}
