# The zero-downtime switch of the app services (`switched`), run by start.sh. Each one whose
# running container differs from the current release (compose's config hash: image, settings,
# labels) gets its new container beside the old one (`up --no-recreate --scale SVC=N+1`, the
# same in compose v1 and v2); Traefik's docker provider routes only to healthy containers, so
# the new one gets traffic once its health check passes. Then the old one is stopped with
# SIGTERM: it drains (/health 503 until Traefik's load-balancer check drops it, every other
# request still served), finishes its in-flight requests and exits within `stop_grace`.
# All new containers must be healthy before any old one stops; a new one that is not within
# `switch_timeout` is removed with the others and the old ones were never touched.

# in_list WORD LIST...: whether WORD is one of LIST (no pipe: `grep -q` under pipefail can
# fail the writer with SIGPIPE).
in_list() {
  local word=$1 item
  shift
  for item in "$@"; do
    [ "$item" != "$word" ] || return 0
  done
  return 1
}

# service_ids SVC [FILTER...]: the ids of the service's containers in this project.
service_ids() {
  containers --filter "label=com.docker.compose.service=$1" "${@:2}"
}

# config_hash SVC: the hash compose would label a container of SVC with for the current release.
config_hash() {
  compose "${profile_args[@]}" config --hash="$1" | awk -v svc="$1" '$1 == svc { print $2 }'
}

# changed_services: the switched services with a running container whose config hash is not
# the current release's, one per line; a service without a running container is left to `up`.
changed_services() {
  local svc id want
  for svc in "${switched[@]}"; do
    want=$(config_hash "$svc")
    [ -n "$want" ] || die "compose printed no config hash for $svc"
    for id in $(service_ids "$svc" --filter status=running); do
      if [ "$(docker inspect --format '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$id")" != "$want" ]; then
        printf '%s\n' "$svc"
        break
      fi
    done
  done
}

# switch_services SVC...: new containers beside the old ones, all healthy, then the old ones
# drained and removed. Returns 1, with the new containers removed, if one never gets healthy.
switch_services() {
  local svc id verdict n scale_args=() old=() new=() deadline failed=""
  for svc in "$@"; do
    # Stopped containers of the service serve nothing and would be counted in its scale.
    for id in $(service_ids "$svc" --filter status=exited --filter status=created --filter status=dead); do
      docker rm --force "$id" >/dev/null
    done
    n=0
    for id in $(service_ids "$svc"); do
      old+=("$id")
      n=$((n + 1))
    done
    scale_args+=(--scale "$svc=$((n + 1))")
  done
  say "switch: starting the new release's $* beside the running container(s)"
  compose "${profile_args[@]}" up -d --no-deps --no-recreate "${scale_args[@]}" "$@" >&2
  for svc in "$@"; do
    for id in $(service_ids "$svc"); do
      in_list "$id" "${old[@]}" || new+=("$svc:$id")
    done
  done
  [ ${#new[@]} -gt 0 ] || die "switch: compose started no new container for $*"
  deadline=$((SECONDS + switch_timeout))
  while :; do
    local waiting=()
    for entry in "${new[@]}"; do
      verdict=$(container_health "${entry#*:}")
      case $verdict in
        ok) ;;
        fail*) failed="${entry%%:*}: ${verdict#fail }" && break 2 ;;
        *) waiting+=("${entry%%:*}: ${verdict#wait }") ;;
      esac
    done
    [ ${#waiting[@]} -gt 0 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      failed="not healthy after ${switch_timeout} s (${waiting[*]})"
      break
    fi
    sleep 1
  done
  if [ -n "$failed" ]; then
    say "switch: the new release's container is not healthy: $failed"
    local ids=()
    for entry in "${new[@]}"; do
      say "--- ${entry%%:*} (new container ${entry#*:}): last $log_lines log lines"
      docker logs --tail "$log_lines" "${entry#*:}" 2>&1 | sed 's/^/    /' >&2 || true
      docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' "${entry#*:}" 2>/dev/null \
        | sed '/^$/d' | tail -n 3 | sed 's/^/    health probe: /' >&2 || true
      ids+=("${entry#*:}")
    done
    # A new container of another service may already be healthy and in Traefik's rotation:
    # stopped like an old one (SIGTERM, drain), never killed under its requests.
    docker stop --time "$stop_grace" "${ids[@]}" >/dev/null
    docker rm --force "${ids[@]}" >/dev/null
    say "switch: drained and removed the new container(s); the running release was never touched"
    return 1
  fi
  # Traefik's docker provider applies a change up to 2 s (its throttle) after the health
  # event: the new containers are routed before the old ones start draining.
  sleep "$settle"
  if [ ${#old[@]} -gt 0 ]; then
    say "switch: new container(s) healthy; draining and stopping the old one(s): ${old[*]}"
    docker stop --time "$stop_grace" "${old[@]}" >/dev/null
    docker rm "${old[@]}" >/dev/null
  fi
  say "switch: $* now on the current release"
}
