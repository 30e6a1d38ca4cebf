cur=$(readlink "$base/current" 2>/dev/null || true)
echo "current release: ${cur##*/}"
if [ -e "$base/.deploy.lock" ] && ! flock -n "$base/.deploy.lock" true 2>/dev/null; then
  echo "deploy in progress: $(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null)"
fi
echo
docker node ls --format 'table {{.Hostname}}\t{{.Status}}\t{{.Availability}}\t{{.ManagerStatus}}'
echo
docker stack services --format 'table {{.Name}}\t{{.Mode}}\t{{.Replicas}}\t{{.Image}}' "$stack" 2>/dev/null \
  || echo "no stack $stack"
echo
for id in $(docker stack services -q "$stack" 2>/dev/null); do
  docker service inspect --format '{{.Spec.Name}}: update {{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.Message}}{{else}}none{{end}}' "$id"
done
echo
docker stack ps --filter desired-state=running --format 'table {{.Name}}\t{{.Node}}\t{{.CurrentState}}\t{{.Error}}' "$stack" 2>/dev/null || true
