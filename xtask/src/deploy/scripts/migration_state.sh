rel="$base/releases/$tag"
[ -f "$rel/images" ] || die "release $tag has no images file: it was never pulled completely"
release_migrations "$rel"
sed 's/^/known\t/' "$rel/migrations.jsonl"
if pg_open; then
  printf 'database\t%s\n' "$pg_db"
  applied_migrations
else
  printf 'database\t\n'
fi
