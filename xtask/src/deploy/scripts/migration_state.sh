rel="$base/releases/$tag"
[ -f "$rel/images" ] || die "release $tag has no images file: it was never pulled completely"
release_migrations "$rel"
sed 's/^/known\t/' "$rel/migrations.jsonl"
