for svc in "${services[@]}"; do
  for id in $(containers --filter "label=com.docker.compose.service=$svc"); do
    state=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
    case $state in 'running healthy' | 'running none') continue ;; esac
    say "--- $svc ($state): last $lines log lines"
    docker logs --tail "$lines" "$id" 2>&1 | sed 's/^/    /' >&2 || true
    docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' "$id" | sed '/^$/d' | tail -n 3 | sed 's/^/    health probe: /' >&2 || true
  done
done
