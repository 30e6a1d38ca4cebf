rel="$base/releases/$tag"
if ! pg_open; then
  # A first deploy: the database starts with the release that creates it.
  say "starting PostgreSQL first"
  compose_in "$rel" up -d --no-deps postgres
  for _ in $(seq 60); do
    pg=$(containers --filter "label=com.docker.compose.service=postgres" | head -n 1)
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$pg" 2>/dev/null)" != healthy ] || break
    sleep 1
  done
  pg_open || die "PostgreSQL did not start: see \`cargo xtask logs postgres\`"
fi
# A one-off container of the new image on the stack's network, out of Traefik's rotation;
# `migrate` holds the migration lock and gives up on a busy table after its lock timeout.
compose_in "$rel" run --rm --no-deps -T --label traefik.enable=false backend migrate >&2 \
  || die "the migration failed (above): the schema is as before (each migration is one transaction) and the previous release still serves"
applied_migrations
