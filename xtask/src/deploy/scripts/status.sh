cur=$(readlink "$base/current" 2>/dev/null || true)
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
