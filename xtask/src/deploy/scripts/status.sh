cur=$(readlink "$base/current" 2>/dev/null || true)
echo "current release: ${cur##*/}"
if [ -e "$base/.deploy.lock" ] && ! flock -n "$base/.deploy.lock" true 2>/dev/null; then
  echo "deploy in progress: $(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null)"
fi
# The last activation unit: how it ended, or that it still runs (or died without a result).
last=$(ls -t "$base"/deploys/*.state 2>/dev/null | head -n 1 || true)
if [ -n "$last" ]; then
  run=${last##*/}
  run=${run%.state}
  result=$(sed -n 's/^result=//p' "$last")
  pid=$(cat "${last%.state}.pid" 2>/dev/null || true)
  if [ "$result" = running ]; then
    if [ -n "$pid" ] && alive "$pid"; then
      result="running (pid $pid)"
    else
      result="ended without a result (the unit died)"
    fi
  fi
  echo
  printf 'last activation: run %s, %s of %s: %s\n' "$run" "$(sed -n 's/^kind=//p' "$last")" \
    "$(sed -n 's/^tag=//p' "$last")" "$result"
  reason=$(sed -n 's/^reason=//p' "$last")
  [ -z "$reason" ] || printf '  why: %s (at %s)\n' "$reason" "$(sed -n 's/^failed_step=//p' "$last")"
  printf '  journal: %s\n' "${last%.state}.log"
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
