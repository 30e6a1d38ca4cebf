//! The bash scripts the server runs, one function per step.
//!
//! Each is sent to `bash -s` over ssh's stdin: no value, secret or not, is ever in an
//! argument list on either machine. Bash reads a script from a pipe one byte at a time
//! and runs `main` only once the whole body has arrived, so a cut connection never runs
//! half a step; `main </dev/null` keeps commands from eating the rest of the script.

use crate::deploy::{
    plan::{Script, quote},
    settings::{Credentials, EnvLine, EnvValue},
};

/// Where the scripts act, and which run they belong to.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) base: String,
    pub(crate) project: String,
    /// Written into the lock's holder file; mutating steps check it is still there.
    pub(crate) run_id: String,
}

/// Files and state of one release, relative to the base directory.
const RELEASES: &str = "releases";
/// The files operators use, as links into `current/`.
const COMPAT_LINKS: &[&str] = &["docker-compose.prod.yml", ".env", "infrastructure"];
/// Releases kept by cleanup (besides the current one and any a container still mounts).
pub(crate) const KEEP_RELEASES: usize = 5;

impl Remote {
    /// Variables and helpers shared by every script.
    pub(crate) fn prelude(&self) -> String {
        let mut out = format!(
            "set -euo pipefail\numask 022\nbase={}\nproject={}\nrun_id={}\n",
            quote(&self.base),
            quote(&self.project),
            quote(&self.run_id)
        );
        out.push_str(PRELUDE);
        out
    }

    /// `prelude`, then `body` as the function `main`.
    fn wrap(&self, body: &Script, guard: bool) -> Script {
        self.wrap_with_stdin(body, guard, false)
    }

    fn wrap_with_stdin(&self, body: &Script, guard: bool, keep_stdin: bool) -> Script {
        let mut script = Script::new();
        script.text(self.prelude()).line("main() {");
        if guard {
            script.line("guard");
        }
        script.append(body).line("}");
        script.line(if keep_stdin {
            "main"
        } else {
            "main </dev/null"
        });
        script
    }

    fn delimiter(&self) -> String {
        format!("TM_EOF_{}", self.run_id.replace('-', "_"))
    }

    /// Read-only facts: Docker, compose, tools, the current release.
    pub(crate) fn probe(&self) -> Script {
        let mut body = Script::new();
        body.text(PROBE);
        self.wrap(&body, false)
    }

    /// Takes the lock and holds it while this ssh session's stdin stays open.
    pub(crate) fn lock(&self, holder: &str) -> Script {
        let mut body = Script::new();
        body.line("mkdir -p \"$base\"")
            .line("exec 9>>\"$base/.deploy.lock\"")
            .line("if ! flock -n 9; then")
            .line("  holder=$(tail -n +2 \"$base/.deploy.lock.holder\" 2>/dev/null || true)")
            .line("  printf 'held\\t%s\\n' \"${holder:-unknown (no holder file)}\"")
            .line("  exit 0")
            .line("fi")
            .line(format!(
                "printf 'id=%s\\n%s\\n' \"$run_id\" {} >\"$base/.deploy.lock.holder.tmp\"",
                quote(holder)
            ))
            .line("mv -f \"$base/.deploy.lock.holder.tmp\" \"$base/.deploy.lock.holder\"")
            .line("echo locked")
            .line(
                "# Held until the deploying machine closes this session (or the connection dies);",
            )
            .line("# `cat` does not inherit the lock's descriptor, so only this shell holds it.")
            .line("cat >/dev/null 9>&- || true")
            .line("rm -f \"$base/.deploy.lock.holder\"");
        self.wrap_with_stdin(&body, false, true)
    }

    /// Unpacks the compose file and `infrastructure/` into `releases/<tag>/`, through a
    /// staging directory; an existing release with the same tag must have the same files.
    pub(crate) fn upload(&self, tag: &str, tar: &[u8], n_files: usize) -> Script {
        let delimiter = self.delimiter();
        let mut body = Script::new();
        body.line(format!("tag={}", quote(tag)))
            .line(format!("rel=\"$base/{RELEASES}/$tag\""))
            .line(format!("stage=\"$base/{RELEASES}/.stage-$run_id\""))
            .line(format!("mkdir -p \"$base/{RELEASES}\""))
            .line("rm -rf \"$stage\"")
            .line("mkdir \"$stage\"")
            .line(format!(
                "base64 -d >\"$stage/.upload.tar\" <<'{delimiter}'"
            ))
            .data(
                format!(
                    "base64 of a tar of docker-compose.prod.yml and infrastructure/: {n_files} files, {} bytes",
                    tar.len()
                ),
                crate::deploy::plan::base64(tar),
            )
            .line(&delimiter)
            .text(UPLOAD_TAIL);
        self.wrap(&body, true)
    }

    /// Writes the release's `.env`: umask 077, a temporary file, then a rename.
    pub(crate) fn write_env(&self, tag: &str, env: &[EnvLine], profiles: &[String]) -> Script {
        let delimiter = self.delimiter();
        let mut body = Script::new();
        body.line(release_dir(tag))
            .line("[ -d \"$rel\" ] || die \"release directory $rel is missing\"")
            .line("(")
            .line("  umask 077")
            .line(format!("  cat >\"$rel/.env.tmp\" <<'{delimiter}'"));
        for line in env {
            body.text(format!("{}='", line.name));
            match &line.value {
                EnvValue::Plain(value) => body.text(value),
                EnvValue::Secret(secret) => body.secret(line.name, secret),
            };
            body.line("'");
        }
        if !profiles.is_empty() {
            // Compose reads its own settings from `.env` too: a rollback to this release, or an
            // operator's `docker compose up` in /opt/timemanager, gets the same profiles.
            body.line(format!("COMPOSE_PROFILES='{}'", profiles.join(",")));
        }
        body.line(&delimiter)
            .line("  chmod 600 \"$rel/.env.tmp\"")
            .line("  mv -f \"$rel/.env.tmp\" \"$rel/.env\"")
            .line(")")
            .line(format!(
                "say \"wrote $rel/.env (mode 0600, {} variables)\"",
                env.len() + usize::from(!profiles.is_empty())
            ));
        self.wrap(&body, true)
    }

    /// `docker login --password-stdin`, pull this repository's images, check their digests,
    /// write `releases/<tag>/images`, log out.
    pub(crate) fn pull(
        &self,
        tag: &str,
        registry: &str,
        credentials: Option<&Credentials>,
        images: &[ImageLine],
    ) -> Script {
        let delimiter = self.delimiter();
        let mut body = Script::new();
        body.line(release_dir(tag));
        if let Some(credentials) = credentials {
            docker_login(&mut body, registry, credentials, &delimiter);
        }
        let services: Vec<&str> = images.iter().map(|image| image.service.as_str()).collect();
        body.line(format!(
            "compose_in \"$rel\" pull --quiet {}",
            services.join(" ")
        ))
        .line(": >\"$rel/.images.tmp\"");
        for image in images {
            body.line(format!(
                "check_digest {} {} {} \"$rel/.images.tmp\"",
                quote(&image.service),
                quote(&image.reference),
                quote(&image.repository),
            ));
        }
        body.line("mv -f \"$rel/.images.tmp\" \"$rel/images\"");
        if credentials.is_some() {
            body.line(format!(
                "docker logout {} >/dev/null 2>&1 || true",
                quote(registry)
            ))
            .line("trap - EXIT");
        }
        self.wrap(&body, true)
    }

    /// Points `current` at the release, atomically, and the operators' links into it.
    pub(crate) fn switch(&self, tag: &str) -> Script {
        let mut body = Script::new();
        body.line(format!("tag={}", quote(tag)))
            .line(format!("rel=\"$base/{RELEASES}/$tag\""))
            .line("for file in docker-compose.prod.yml .env images; do")
            .line("  [ -e \"$rel/$file\" ] || die \"release $tag is incomplete on the server: $file is missing\"")
            .line("done")
            .line("prev=$(readlink \"$base/current\" 2>/dev/null || true)")
            .line("prev=${prev##*/}")
            .line("if [ \"$prev\" != \"$tag\" ]; then")
            .line("  printf '%s\\n' \"$prev\" >\"$rel/.previous\"")
            .line("else")
            .line("  prev=$(cat \"$rel/.previous\" 2>/dev/null || true)")
            .line("fi")
            .line(format!("set_current \"{RELEASES}/$tag\""))
            .line(format!("for name in {}; do", COMPAT_LINKS.join(" ")))
            .text(COMPAT_LINK_LOOP)
            .line("done")
            .line("date +%s >\"$rel/.activated\"")
            .line("printf 'previous=%s\\n' \"$prev\"")
            .line("say \"current -> releases/$tag (before: ${prev:-none})\"");
        self.wrap(&body, true)
    }

    /// Points `current` back at the release recorded as `<tag>/.previous`.
    pub(crate) fn switch_back(&self, tag: &str) -> Script {
        let mut body = Script::new();
        body.line(format!("tag={}", quote(tag)))
            .line(format!(
                "prev=$(cat \"$base/{RELEASES}/$tag/.previous\" 2>/dev/null || true)"
            ))
            .line(format!(
                "if [ -z \"$prev\" ] || [ ! -e \"$base/{RELEASES}/$prev/.env\" ]; then"
            ))
            .line("  die \"there is no previous release to go back to: $tag stays current\"")
            .line("fi")
            .line(format!("set_current \"{RELEASES}/$prev\""))
            .line(format!("date +%s >\"$base/{RELEASES}/$prev/.activated\""))
            .line("printf 'current=%s\\n' \"$prev\"")
            .line("say \"current -> releases/$prev (back from $tag)\"");
        self.wrap(&body, true)
    }

    /// `up -d --remove-orphans` for the current release, then recreates the services whose
    /// mounted configuration files differ from the current release's.
    pub(crate) fn start(&self, profiles: &[String]) -> Script {
        let profile_args: String = profiles
            .iter()
            .map(|profile| format!(" --profile {}", quote(profile)))
            .collect();
        let mut body = Script::new();
        body.line("cur=$(readlink \"$base/current\")")
            .line("cur=${cur##*/}")
            .line(format!("compose{profile_args} up -d --remove-orphans"))
            .line("stale=$(stale_services \"$cur\")")
            .line("if [ -n \"$stale\" ]; then")
            .line("  say \"mounted configuration changed for: $(echo $stale); recreating them\"")
            .line(format!(
                "  compose{profile_args} up -d --no-deps --force-recreate $stale"
            ))
            .line("fi");
        self.wrap(&body, true)
    }

    /// One line per container of the project: service, state, health, restarts, image.
    pub(crate) fn container_states(&self) -> Script {
        let mut body = Script::new();
        body.line("ids=$(containers)")
            .line("[ -z \"$ids\" ] || docker inspect --format '{{index .Config.Labels \"com.docker.compose.service\"}}{{\"\\t\"}}{{.State.Status}}{{\"\\t\"}}{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}{{\"\\t\"}}{{.RestartCount}}{{\"\\t\"}}{{.Config.Image}}' $ids");
        self.wrap(&body, false)
    }

    /// The last log lines and health probe output of the services that are not healthy.
    pub(crate) fn failing_logs(&self, services: &[String], lines: u32) -> Script {
        let mut body = Script::new();
        body.line(format!(
            "for svc in {}; do",
            services
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(" ")
        ))
        .line("  for id in $(containers --filter \"label=com.docker.compose.service=$svc\"); do")
        .line("    state=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \"$id\")")
        .line("    case $state in 'running healthy' | 'running none') continue ;; esac")
        .line(format!("    say \"--- $svc ($state): last {lines} log lines\""))
        .line(format!("    docker logs --tail {lines} \"$id\" 2>&1 | sed 's/^/    /' >&2 || true"))
        .line("    docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' \"$id\" | sed '/^$/d' | tail -n 3 | sed 's/^/    health probe: /' >&2 || true")
        .line("  done")
        .line("done");
        self.wrap(&body, false)
    }

    /// Appends the run's record and marks the release's result.
    pub(crate) fn record(&self, tag: &str, json_line: &str, result: &str) -> Script {
        let mut body = Script::new();
        body.line(format!(
            "printf '%s\\n' {} >>\"$base/releases.jsonl\"",
            quote(json_line)
        ))
        .line(release_dir(tag))
        .line(format!(
            "[ ! -d \"$rel\" ] || printf '%s\\n' {} >\"$rel/.result\"",
            quote(result)
        ));
        self.wrap(&body, true)
    }

    /// Keeps the newest releases, the current one and any a running container mounts;
    /// removes the others with their image tags, then dangling images. Never fails the run.
    pub(crate) fn cleanup(&self) -> Script {
        let mut body = Script::new();
        body.line(format!("keep={KEEP_RELEASES}")).text(CLEANUP);
        self.wrap(&body, true)
    }

    /// `current`, the releases with their times and results, and the lock holder if any.
    pub(crate) fn list_releases(&self) -> Script {
        let mut body = Script::new();
        body.text(LIST_RELEASES);
        self.wrap(&body, false)
    }

    /// The current release, `compose ps`, and each container's health.
    pub(crate) fn status(&self) -> Script {
        let mut body = Script::new();
        body.text(STATUS);
        self.wrap(&body, false)
    }

    /// `docker logs` of the service's container.
    pub(crate) fn logs(&self, service: &str, tail: u32, follow: bool) -> Script {
        let mut body = Script::new();
        body.line(format!("svc={}", quote(service)))
            .line("id=$(containers --filter \"label=com.docker.compose.service=$svc\" | head -n 1)")
            .line("[ -n \"$id\" ] || die \"no container of service $svc in compose project $project (see \\`cargo xtask status\\`)\"")
            .line(format!(
                "exec docker logs --tail {tail}{} \"$id\"",
                if follow { " --follow" } else { "" }
            ));
        self.wrap(&body, false)
    }

    /// Checks the images of a release are still on the server with their recorded digests,
    /// pulling the missing ones (rollback uses the release's own digests, not today's).
    pub(crate) fn ensure_images(
        &self,
        tag: &str,
        registry: Option<(&str, &Credentials)>,
    ) -> Script {
        let delimiter = self.delimiter();
        let mut body = Script::new();
        body.line(release_dir(tag))
            .line("[ -f \"$rel/images\" ] || die \"release $(basename \"$rel\") has no images file: it was never pulled completely\"")
            .line("missing=()")
            .line("while IFS=$'\\t' read -r svc ref digest; do")
            .line("  repo=${ref%:*}")
            .line("  if docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' \"$ref\" 2>/dev/null | grep -qxF \"$repo@$digest\"; then continue; fi")
            .line("  missing+=(\"$repo@$digest\")")
            .line("done <\"$rel/images\"")
            .line("[ ${#missing[@]} -gt 0 ] || exit 0")
            .line("say \"pulling ${#missing[@]} image(s) of the release by digest\"");
        if let Some((registry, credentials)) = registry {
            docker_login(&mut body, registry, credentials, &delimiter);
        }
        body.line("for image in \"${missing[@]}\"; do")
            .line("  docker pull --quiet \"$image\" >/dev/null || die \"cannot pull $image: set the registry credentials, or roll back to a release whose images are still on the server\"")
            .line("done")
            .line("while IFS=$'\\t' read -r svc ref digest; do")
            .line("  docker tag \"${ref%:*}@$digest\" \"$ref\"")
            .line("done <\"$rel/images\"");
        self.wrap(&body, true)
    }
}

/// `rel="$base/releases/TAG"`, the tag quoted if it needs to be.
fn release_dir(tag: &str) -> String {
    if tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        format!("rel=\"$base/{RELEASES}/{tag}\"")
    } else {
        format!("rel=\"$base/{RELEASES}/\"{}", quote(tag))
    }
}

/// One image of a release, as the pull step checks it.
#[derive(Debug, Clone)]
pub(crate) struct ImageLine {
    pub(crate) service: String,
    /// `registry/owner/repo/service:tag`
    pub(crate) reference: String,
    /// `registry/owner/repo/service`
    pub(crate) repository: String,
}

/// Provisions a fresh Debian or Ubuntu server; safe to run again.
pub(crate) fn server_setup(base: &str, ssh_port: u16, deploy_user: &str) -> Script {
    let mut script = Script::new();
    script
        .line("set -euo pipefail")
        .line(format!("base={}", quote(base)))
        .line(format!("ssh_port={ssh_port}"))
        .line(format!("deploy_user={}", quote(deploy_user)))
        .text(SERVER_SETUP);
    script
}

const PRELUDE: &str = r#"export DOCKER_CONFIG="$base/.docker"
say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 3; }
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  compose_cmd=()
fi
# compose_in DIR ARGS...: compose with the compose file and .env found in DIR, always with
# the same project name and directory, so containers and volumes carry across releases.
compose_in() {
  local dir=$1
  shift
  [ ${#compose_cmd[@]} -gt 0 ] || die "neither \`docker compose\` nor \`docker-compose\` is installed: run \`cargo xtask server-setup\`"
  "${compose_cmd[@]}" -p "$project" --project-directory "$base" --env-file "$dir/.env" -f "$dir/docker-compose.prod.yml" "$@"
}
# The current release through the links an operator uses, so both see the same paths.
compose() { compose_in "$base" "$@"; }
# The project's containers, found by compose labels (same under compose v1 and v2).
containers() {
  docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.oneoff=False" "$@"
}
guard() {
  if [ "$(head -n 1 "$base/.deploy.lock.holder" 2>/dev/null)" != "id=$run_id" ] \
    || flock -n "$base/.deploy.lock" true; then
    die "this run no longer holds the deploy lock of $base (lost connection?): stopping before any change"
  fi
}
set_current() {
  ln -sfn "$1" "$base/.current.tmp"
  mv -fT "$base/.current.tmp" "$base/current"
}
# mounted_releases: "service<TAB>release<TAB>path" for every file or directory of a release
# that a running container has bind-mounted. Docker resolves the `current` link when a
# container starts, so this is where the container really reads its configuration from.
# mountinfo gives paths from the root of their filesystem, hence the suffixes of $base.
mounted_releases() {
  local id pid svc root rest b
  for id in $(containers --filter status=running); do
    read -r pid svc < <(docker inspect --format '{{.State.Pid}} {{index .Config.Labels "com.docker.compose.service"}}' "$id") || continue
    if [ ! -r "/proc/$pid/mountinfo" ]; then
      say "warning: cannot read the mounts of $svc (pid $pid)"
      continue
    fi
    while read -r _ _ _ root _; do
      rest=
      b=$base
      while [ -n "$b" ]; do
        case $root in "$b"/releases/*/*) rest=${root#"$b"/releases/}; break ;; esac
        case $b in /*/*) b=/${b#/*/} ;; *) b= ;; esac
      done
      if [ -z "$rest" ]; then
        case $root in /releases/*/*) rest=${root#/releases/} ;; *) continue ;; esac
      fi
      printf '%s\t%s\t%s\n' "$svc" "${rest%%/*}" "${rest#*/}"
    done <"/proc/$pid/mountinfo"
  done
}
# stale_services TAG: services whose mounted files differ from release TAG's.
stale_services() {
  local svc old path
  mounted_releases | while IFS=$'\t' read -r svc old path; do
    [ "$old" != "$1" ] || continue
    diff -r -q "$base/releases/$old/$path" "$base/releases/$1/$path" >/dev/null 2>&1 || printf '%s\n' "$svc"
  done | sort -u
}
# check_digest SERVICE REF REPOSITORY FILE: the pulled image's digest, appended to FILE and
# reported (the deploying machine compares it with what it pushed).
check_digest() {
  local got
  got=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$2" | grep -F "$3@" | head -n 1 || true)
  got=${got#*@}
  [ -n "$got" ] || die "$2 has no digest from $3 after the pull"
  printf '%s\t%s\t%s\n' "$1" "$2" "$got" >>"$4"
  printf 'digest\t%s\t%s\n' "$1" "$got"
}
"#;

const PROBE: &str = r#"command -v docker >/dev/null || die "docker is not installed on $(hostname): run \`cargo xtask server-setup\`"
engine=$(docker version --format '{{.Server.Version}}' 2>/dev/null) \
  || die "the Docker engine on $(hostname) does not answer: is dockerd running, and may $(id -un) use it?"
[ ${#compose_cmd[@]} -gt 0 ] || die "neither \`docker compose\` nor \`docker-compose\` is installed on $(hostname): run \`cargo xtask server-setup\`"
for tool in flock diff base64 tar; do
  command -v "$tool" >/dev/null || die "$tool is missing on $(hostname)"
done
if [ -d "$base" ]; then
  [ -w "$base" ] || die "$(id -un) cannot write to $base"
else
  [ -w "$(dirname "$base")" ] || die "$base does not exist and $(id -un) cannot create it: run \`cargo xtask server-setup\`"
fi
printf 'docker=%s\n' "$engine"
printf 'compose=%s\n' "${compose_cmd[*]}"
current=$(readlink "$base/current" 2>/dev/null || true)
printf 'current=%s\n' "${current##*/}"
"#;

const UPLOAD_TAIL: &str = r#"tar -x --no-same-owner -f "$stage/.upload.tar" -C "$stage"
rm -f "$stage/.upload.tar"
if [ -e "$rel" ]; then
  if diff -r -q "$stage/docker-compose.prod.yml" "$rel/docker-compose.prod.yml" >&2 \
    && diff -r -q "$stage/infrastructure" "$rel/infrastructure" >&2; then
    rm -rf "$stage"
    say "release $tag is already on the server with the same files: reusing it"
  else
    rm -rf "$stage"
    die "release $tag is already on the server with other files (listed above): a tag names one commit, so deploy a new commit"
  fi
else
  date +%s >"$stage/.uploaded"
  mv -T "$stage" "$rel"
  say "uploaded releases/$tag"
fi
"#;

const COMPAT_LINK_LOOP: &str = r#"  if [ -e "$base/$name" ] && [ ! -L "$base/$name" ]; then
    # A file from before release directories: keep it, out of the way.
    mkdir -p "$base/pre-releases"
    mv "$base/$name" "$base/pre-releases/"
    say "moved $base/$name to $base/pre-releases/: it is a link into current/ now"
  fi
  ln -sfn "current/$name" "$base/.link.tmp"
  mv -fT "$base/.link.tmp" "$base/$name"
"#;

const CLEANUP: &str = r#"set +e
cur=$(readlink "$base/current" 2>/dev/null)
cur=${cur##*/}
mounted=$(mounted_releases | cut -f 2 | sort -u)
n=0
for tag in $(
  for dir in "$base"/releases/*/; do
    [ -d "$dir" ] || continue
    name=${dir%/}
    name=${name##*/}
    printf '%s %s\n' "$(cat "$dir/.activated" 2>/dev/null || cat "$dir/.uploaded" 2>/dev/null || echo 0)" "$name"
  done | sort -rn | cut -d ' ' -f 2
); do
  n=$((n + 1))
  [ "$n" -gt "$keep" ] || continue
  [ "$tag" != "$cur" ] || continue
  if printf '%s\n' "$mounted" | grep -qxF "$tag"; then
    say "keeping release $tag: a running container still mounts its files"
    continue
  fi
  refs=$(cut -f 2 "$base/releases/$tag/images" 2>/dev/null)
  rm -rf "${base:?}/releases/$tag"
  say "removed release $tag"
  for ref in $refs; do
    # Kept releases keep their images tagged, so `image prune` below never removes them.
    if ! grep -qsF "$ref" "$base"/releases/*/images && docker rmi "$ref" >/dev/null 2>&1; then
      say "untagged $ref"
    fi
  done
done
find "$base/releases" -maxdepth 1 -name '.stage-*' -mmin +60 -exec rm -rf {} + 2>/dev/null
docker image prune -f >&2 || say "warning: docker image prune failed"
exit 0
"#;

const LIST_RELEASES: &str = r#"cur=$(readlink "$base/current" 2>/dev/null || true)
printf 'current\t%s\n' "${cur##*/}"
for dir in "$base"/releases/*/; do
  [ -d "$dir" ] || continue
  name=${dir%/}
  name=${name##*/}
  printf 'release\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" \
    "$(cat "$dir/.uploaded" 2>/dev/null)" "$(cat "$dir/.activated" 2>/dev/null)" \
    "$(cat "$dir/.result" 2>/dev/null)" "$(cat "$dir/.previous" 2>/dev/null)" \
    "$(head -n 1 "$dir/images" 2>/dev/null | cut -f 2 | cut -d / -f 1)"
done
# Only the one non-secret line of the current `.env`: the health URL's host.
printf 'domain\t%s\n' "$(sed -n "s/^DOMAIN='\(.*\)'\$/\1/p" "$base/current/.env" 2>/dev/null)"
if [ -e "$base/.deploy.lock" ] && ! flock -n "$base/.deploy.lock" true 2>/dev/null; then
  printf 'lock\t%s\n' "$(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null)"
fi
"#;

const STATUS: &str = r#"cur=$(readlink "$base/current" 2>/dev/null || true)
echo "current release: ${cur##*/}"
if [ -e "$base/.deploy.lock" ] && ! flock -n "$base/.deploy.lock" true 2>/dev/null; then
  echo "deploy in progress: $(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null)"
fi
echo
[ ! -e "$base/docker-compose.prod.yml" ] || compose ps
echo
ids=$(containers)
if [ -n "$ids" ]; then
  printf '%-16s %-10s %-10s %-9s %s\n' SERVICE STATE HEALTH RESTARTS IMAGE
  docker inspect --format '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.RestartCount}} {{.Config.Image}}' $ids \
    | sort | while read -r svc state health restarts image; do
      printf '%-16s %-10s %-10s %-9s %s\n' "$svc" "$state" "$health" "$restarts" "$image"
    done
else
  echo "no containers in compose project $project"
fi
"#;

const SERVER_SETUP: &str = r#"say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 3; }
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || die "server-setup needs root: ssh as root, or as a user with passwordless sudo"
# shellcheck disable=SC1091
. /etc/os-release
case "${ID:-}" in
  debian | ubuntu) ;;
  *) die "server-setup supports Debian and Ubuntu; this is ${PRETTY_NAME:-unknown}" ;;
esac
packages=()
command -v docker >/dev/null || packages+=(docker.io)
command -v ufw >/dev/null || packages+=(ufw)
command -v flock >/dev/null || packages+=(util-linux)
need_compose=1
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; then need_compose=0; fi
if [ ${#packages[@]} -gt 0 ] || [ "$need_compose" = 1 ]; then
  apt-get update -qq
  if [ "$need_compose" = 1 ]; then
    # The v2 plugin where the distribution has it (Ubuntu, Docker's repository), else v1.
    for candidate in docker-compose-v2 docker-compose-plugin docker-compose; do
      if apt-cache show "$candidate" >/dev/null 2>&1; then
        packages+=("$candidate")
        break
      fi
    done
  fi
  say "installing: ${packages[*]}"
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
else
  say "Docker, compose, ufw and flock are already installed"
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl enable --now docker >&2
fi
install -d -m 0750 "$base" "$base/releases"
if [ "$deploy_user" != root ]; then
  usermod -aG docker "$deploy_user"
  chown "$deploy_user:" "$base" "$base/releases"
fi
# ssh first, so enabling the firewall never locks this session out.
ufw allow "$ssh_port/tcp" >&2
ufw allow 80/tcp >&2
ufw allow 443/tcp >&2
ufw --force enable >&2
ufw status >&2
docker version --format 'docker {{.Server.Version}}'
if docker compose version >/dev/null 2>&1; then docker compose version; else docker-compose version --short; fi
"#;

/// `docker login --password-stdin` with the password in a quoted here-document (never in
/// argv), and a logout when the script exits.
fn docker_login(body: &mut Script, registry: &str, credentials: &Credentials, delimiter: &str) {
    body.line(format!(
        "login=$(docker login {} --username {} --password-stdin 2>&1 <<'{delimiter}'",
        quote(registry),
        quote(&credentials.username)
    ))
    .secret("registry password", &credentials.secret)
    .line("")
    .line(delimiter)
    .line(format!(
        ") || die \"docker login {registry} failed: $login\""
    ))
    .line("# The token serves this pull only: none stays on the server.")
    .line(format!(
        "trap 'docker logout {} >/dev/null 2>&1 || true' EXIT",
        quote(registry)
    ));
}

#[cfg(test)]
mod tests;
