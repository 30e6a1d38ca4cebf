# The current release (after `switch` or `switch back`), as a stack.
rel="$base/current"
tag=$(readlink "$rel")
tag=${tag##*/}
for file in docker-stack.yml .env images; do
  [ -e "$rel/$file" ] || die "release $tag has no $file: it was not deployed in swarm mode"
done
[ -e "$base/swarm-secrets.env" ] || die "$base/swarm-secrets.env is missing: deploy in swarm mode first"
# `docker stack deploy` reads no .env: the release's values (no secrets in this mode) and
# the secrets' names are exported for its interpolation.
set -a
# shellcheck disable=SC1091
. "$rel/.env"
# shellcheck disable=SC1091
. "$base/swarm-secrets.env"
set +a
registry_login
since=$(date +%s)
# --with-registry-auth hands this login to the nodes that pull; --resolve-image always pins
# each tag to the digest the registry has now, so every node runs the same image.
docker stack deploy --with-registry-auth --prune --resolve-image always \
  -c "$rel/docker-stack.yml" "$stack" >&2 || die "docker stack deploy of $tag failed"
# After --prune, the stack's services are exactly the file's.
mapfile -t services < <(docker stack services --format '{{.Name}}' "$stack" | sed "s/^${stack}_//")
[ ${#services[@]} -gt 0 ] || die "stack $stack has no services after the deploy"
# The CLI returns before anything converged (and exits 0 after an automatic rollback):
# each service's UpdateStatus and tasks decide.
deadline=$((since + timeout))
last_report=0
while :; do
  waiting=()
  failed=()
  for svc in "${services[@]}"; do
    full="${stack}_$svc"
    read -r state started image replicas < <(docker service inspect --format \
      '{{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt.Unix}}{{else}}none 0{{end}} {{.Spec.TaskTemplate.ContainerSpec.Image}} {{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{else}}1{{end}}' \
      "$full" 2>/dev/null) || { waiting+=("$svc (no service yet)"); continue; }
    # An UpdateStatus from before this deploy is about an older update.
    [ "$started" -ge "$since" ] || state=none
    case $state in
      paused | rollback_started | rollback_paused | rollback_completed)
        failed+=("$svc ($state: $(docker service inspect --format '{{.UpdateStatus.Message}}' "$full"))")
        continue
        ;;
    esac
    ids=$(docker service ps -q --filter desired-state=running "$full")
    running=0
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      running=$(docker inspect --type task --format '{{.Status.State}} {{.Spec.ContainerSpec.Image}}' $ids \
        | awk -v image="$image" '$1 == "running" && $2 == image' | wc -l)
    fi
    if [ "$state" = updating ] || [ "$running" -ne "$replicas" ]; then
      waiting+=("$svc ($state, $running of $replicas tasks running ${image##*@})")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    for f in "${failed[@]}"; do
      say "  ${f%% *}:"
      docker service ps --no-trunc --format '    {{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}' "${stack}_${f%% *}" 2>/dev/null | head -n 6 >&2 || true
    done
    die "swarm rolled back or paused $(printf '%s; ' "${failed[@]}")release $tag is not running"
  fi
  [ ${#waiting[@]} -gt 0 ] || break
  now=$(date +%s)
  if [ "$now" -ge "$deadline" ]; then
    for w in "${waiting[@]}"; do
      docker service ps --no-trunc --format '    {{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}' "${stack}_${w%% *}" 2>/dev/null | head -n 6 >&2 || true
    done
    die "after $timeout s, still waiting for $(printf '%s; ' "${waiting[@]}")"
  fi
  if [ $((now - last_report)) -ge 5 ]; then
    say "waiting: $(printf '%s; ' "${waiting[@]}")"
    last_report=$now
  fi
  sleep 1
done
say "stack $stack runs $tag: every service converged in $(($(date +%s) - since)) s"
for svc in "${own_services[@]}"; do
  image=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${stack}_$svc")
  case $image in *@sha256:*) printf 'digest\t%s\t%s\n' "$svc" "${image##*@}" ;; esac
done
