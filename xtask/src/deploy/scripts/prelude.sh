export DOCKER_CONFIG="$base/.docker"
say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 3; }
# v2 (the CLI plugin) first, else v1; `compose_choice` (set from TM_COMPOSE on the deploying
# machine, for labs that test both) allows only one of them.
compose_choice=${compose_choice:-}
compose_cmd=()
if [ "$compose_choice" != v1 ] && docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif [ "$compose_choice" != v2 ] && command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
fi
case $compose_choice in
  v1) compose_missing="\`docker-compose\` (compose v1, forced by TM_COMPOSE=v1) is not installed" ;;
  v2) compose_missing="\`docker compose\` (compose v2, forced by TM_COMPOSE=v2) is not installed" ;;
  *) compose_missing="neither \`docker compose\` nor \`docker-compose\` is installed" ;;
esac
# compose_in DIR ARGS...: compose with the compose file and .env found in DIR, always with
# the same project name and directory, so containers and volumes carry across releases.
# A test lab's release also has docker-compose.override.yml (`deploy --compose-override`);
# production releases never do. An explicit -f turns off compose's own override lookup.
compose_in() {
  local dir=$1
  shift
  [ ${#compose_cmd[@]} -gt 0 ] || die "$compose_missing: run \`cargo xtask server-setup\`"
  local files=(-f "$dir/docker-compose.prod.yml")
  [ ! -e "$dir/docker-compose.override.yml" ] || files+=(-f "$dir/docker-compose.override.yml")
  "${compose_cmd[@]}" -p "$project" --project-directory "$base" --env-file "$dir/.env" "${files[@]}" "$@"
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
# set_current releases/TAG: the atomic switch; the override's link follows what TAG has.
set_current() {
  ln -sfn "$1" "$base/.current.tmp"
  mv -fT "$base/.current.tmp" "$base/current"
  if [ -e "$base/current/docker-compose.override.yml" ]; then
    ln -sfn current/docker-compose.override.yml "$base/.override.tmp"
    mv -fT "$base/.override.tmp" "$base/docker-compose.override.yml"
  elif [ -L "$base/docker-compose.override.yml" ]; then
    rm -f "$base/docker-compose.override.yml"
  fi
}
# mounted_releases: "service<TAB>release<TAB>path" for every file or directory of a release
# that a running container has bind-mounted. Docker resolves the `current` link when a
# container starts, so this is where the container really reads its configuration from.
# mountinfo gives each mount's path inside its own filesystem: all of `$base/releases/...`, or
# a shorter tail of it when $base (or a parent) is a mount point. Either way the release and
# the path follow the last `/releases/` (release files have no directory of that name), and
# these containers bind-mount nothing else from a `releases/` directory.
mounted_releases() {
  local id pid svc root rest
  for id in $(containers --filter status=running); do
    read -r pid svc < <(docker inspect --format '{{.State.Pid}} {{index .Config.Labels "com.docker.compose.service"}}' "$id") || continue
    if [ ! -r "/proc/$pid/mountinfo" ]; then
      say "warning: cannot read the mounts of $svc (pid $pid)"
      continue
    fi
    while read -r _ _ _ root _; do
      case $root in */releases/*/*) rest=${root##*/releases/} ;; *) continue ;; esac
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
# container_health ID: `ok`, `wait WHY` or `fail WHY`: the verdict on one container, the
# same for the switch's new containers and the health gate.
container_health() {
  local state health restarts
  read -r state health restarts < <(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' "$1") \
    || { echo "fail it is gone"; return; }
  case "$state $health" in
    'running healthy' | 'running none') echo ok ;;
    *' unhealthy') echo "fail its health check fails (unhealthy)" ;;
    exited* | dead*) echo "fail it $state" ;;
    *) if [ "$restarts" -ge 3 ]; then echo "fail it restarted $restarts times"; else echo "wait $state, $health"; fi ;;
  esac
}
# alive PID: whether the process runs (a zombie, killed but not yet reaped, does not).
alive() {
  local state
  state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
  [ -n "$state" ] && [ "$state" != Z ]
}
