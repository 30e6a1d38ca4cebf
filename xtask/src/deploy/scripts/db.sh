# The database helpers of the migration and snapshot steps.
# pg_open: finds the running PostgreSQL container of the project and the role and database it
# was created with (its own POSTGRES_USER/POSTGRES_DB); fails when none runs.
pg_open() {
  pg=$(containers --filter "label=com.docker.compose.service=postgres" --filter status=running | head -n 1)
  [ -n "$pg" ] || return 1
  local env
  env=$(docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$pg")
  pg_user=$(sed -n 's/^POSTGRES_USER=//p' <<<"$env" | head -n 1)
  pg_user=${pg_user:-postgres}
  pg_db=$(sed -n 's/^POSTGRES_DB=//p' <<<"$env" | head -n 1)
  pg_db=${pg_db:-$pg_user}
}
# psql_in [DB] < SQL: psql inside the container, as its user over its socket (no password).
psql_in() {
  docker exec -i "$pg" psql -X -q -v ON_ERROR_STOP=1 -At -F $'\t' -U "$pg_user" -d "${1:-$pg_db}"
}
# release_migrations REL: REL/migrations.jsonl, what the release's backend knows
# (`timemanager-backend migrations`), made from its image when a release predates the file.
release_migrations() {
  local rel=$1 ref
  [ ! -s "$rel/migrations.jsonl" ] || return 0
  ref=$(awk -F '\t' '$1 == "backend" { print $2 }' "$rel/images")
  [ -n "$ref" ] || die "release $(basename "$rel") has no backend image in its images file"
  docker run --rm --network none "$ref" migrations >"$rel/.migrations.tmp" \
    || die "$ref cannot list its migrations (\`timemanager-backend migrations\`): is it older than the migration step?"
  mv -f "$rel/.migrations.tmp" "$rel/migrations.jsonl"
}
# applied_migrations: "applied<TAB>version<TAB>description<TAB>success<TAB>checksum" per row of
# _sqlx_migrations (nothing when the table does not exist yet).
applied_migrations() {
  [ "$(psql_in <<<"SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")" = t ] || return 0
  psql_in <<<"SELECT 'applied', version, description, success, encode(checksum, 'hex') FROM _sqlx_migrations ORDER BY version"
}
# table_counts [DB]: "count<TAB>table<TAB>rows" for every table of the public schema.
table_counts() {
  psql_in "${1:-}" <<'SQL'
SELECT 'count', table_name,
  (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM public.%I', table_name), false, true, '')))[1]::text
FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1, 2
SQL
}
# snapshot_to FILE: pg_dump -Fc of the database inside its container (client and server always
# the same version) to FILE.partial, checked with pg_restore --list, fsynced, then renamed.
# Refuses when the file system has less than twice the database's size free; a failed dump
# leaves no .partial behind.
snapshot_to() {
  local file=$1 dir size free
  dir=$(dirname "$file")
  mkdir -p "$dir"
  chmod 700 "$dir"
  size=$(psql_in <<<"SELECT pg_database_size(current_database())")
  free=$(df -P -B1 "$dir" | awk 'NR == 2 { print $4 }')
  if [ "$free" -lt $((2 * size)) ]; then
    die "$dir has $free bytes free, less than twice the database's $size bytes: free space there (or remove old snapshots) before a snapshot"
  fi
  # Under the deploy lock, any .partial is what a run cut off mid-dump left behind.
  find "$dir" -maxdepth 1 -name '*.partial' -delete
  if ! (umask 077 && docker exec "$pg" pg_dump -Fc -U "$pg_user" -d "$pg_db" >"$file.partial"); then
    rm -f "$file.partial"
    die "pg_dump of $pg_db into $file.partial failed (disk full?): nothing changed"
  fi
  if ! docker exec -i "$pg" pg_restore --list <"$file.partial" >/dev/null; then
    rm -f "$file.partial"
    die "$file.partial is not a readable dump (pg_restore --list failed): nothing changed"
  fi
  sync "$file.partial"
  mv -f "$file.partial" "$file"
  sync "$dir"
  printf 'snapshot\t%s\t%s\t%s\n' "$file" "$(stat -c %s "$file")" "$size"
}
# prune_snapshots KEEP: the newest KEEP dumps stay (rescue dumps are never pruned).
prune_snapshots() {
  local dir="$base/snapshots"
  [ -d "$dir" ] || return 0
  find "$dir" -maxdepth 1 -name '*.pgdump' ! -name '*.rescue.pgdump' -printf '%f\n' | sort -r \
    | tail -n +$(($1 + 1)) | while read -r old; do
    rm -f "$dir/$old"
    say "removed the old snapshot $old (keeping $1)"
  done
}
