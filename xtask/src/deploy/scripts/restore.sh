file="$base/snapshots/$snapshot"
[ -f "$file" ] || die "no snapshot $snapshot in $base/snapshots: see \`cargo xtask db snapshots\`"
pg_open || die "no PostgreSQL container of $project runs: start the stack first (\`cargo xtask status\`)"
docker exec -i "$pg" pg_restore --list <"$file" >/dev/null || die "$snapshot is not a readable dump (pg_restore --list failed)"
say "stopping the app services: from here until the release starts, the site answers 502"
stopped=()
for svc in "${app_services[@]}"; do
  mapfile -t -O "${#stopped[@]}" stopped < <(containers --filter "label=com.docker.compose.service=$svc" --filter status=running)
done
# Any failure from here on starts them again on the unchanged database.
trap '[ ${#stopped[@]} -eq 0 ] || docker start "${stopped[@]}" >/dev/null' EXIT
[ ${#stopped[@]} -eq 0 ] || docker stop "${stopped[@]}" >/dev/null
cur=$(readlink "$base/current" 2>/dev/null || true)
cur=${cur##*/}
# Whatever the restore replaces stays in a rescue dump, never pruned.
snapshot_to "$base/snapshots/$(date -u +%Y%m%dT%H%M%SZ)-${cur:-unknown}.rescue.pgdump" | sed 's/^snapshot/rescue/'
table_counts | sed 's/^count/before/'
new="${pg_db}_restore"
old="${pg_db}_replaced"
psql_in postgres <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS "$new" WITH (FORCE);
CREATE DATABASE "$new" OWNER "$pg_user";
SQL
if ! docker exec -i "$pg" pg_restore --exit-on-error --single-transaction -U "$pg_user" -d "$new" <"$file" >&2; then
  psql_in postgres <<<"DROP DATABASE IF EXISTS \"$new\""
  die "restoring $snapshot failed (above): the database is unchanged; start the release again with \`cargo xtask rollback --to $cur\`"
fi
[ "$(psql_in "$new" <<<"SELECT count(*) FROM _sqlx_migrations WHERE NOT success")" = 0 ] \
  || die "$snapshot holds a failed migration: the database is unchanged"
table_counts "$new" | sed 's/^count/after/'
# Both renames in one transaction: the database is always there under its name.
psql_in postgres >/dev/null <<SQL
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$pg_db' AND pid <> pg_backend_pid();
BEGIN;
ALTER DATABASE "$pg_db" RENAME TO "$old";
ALTER DATABASE "$new" RENAME TO "$pg_db";
COMMIT;
DROP DATABASE "$old" WITH (FORCE);
SQL
trap - EXIT
say "restored $snapshot into $pg_db"
