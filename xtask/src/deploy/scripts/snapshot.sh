pg_open || die "no PostgreSQL container of $project runs: nothing to snapshot"
# Named after the release whose schema it holds: the one a restore starts.
cur=$(readlink "$base/current" 2>/dev/null || true)
cur=${cur##*/}
snapshot_to "$base/snapshots/$(date -u +%Y%m%dT%H%M%SZ)-${cur:-unknown}.pgdump"
prune_snapshots "$keep"
