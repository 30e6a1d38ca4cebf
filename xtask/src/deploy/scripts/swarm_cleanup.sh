# Secrets of earlier releases: the names swarm-secrets.env lists are in use; Docker refuses
# to remove one a service still mounts.
keep=$(cut -d "'" -f 2 "$base/swarm-secrets.env" 2>/dev/null)
for name in $(docker secret ls --filter label=timemanager.secret --format '{{.Name}}'); do
  if printf '%s\n' "$keep" | grep -qxF "$name"; then
    continue
  fi
  if docker secret rm "$name" >/dev/null 2>&1; then
    say "removed secret $name"
  else
    say "keeping secret $name: a service still uses it"
  fi
done
