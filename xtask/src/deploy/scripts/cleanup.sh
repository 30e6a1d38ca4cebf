set +e
cur=$(readlink "$base/current" 2>/dev/null)
cur=${cur##*/}
mounted=$(mounted_releases | cut -f 2 | sort -u)
n=0
for tag in $(
  for dir in "$base"/releases/*/; do
    [ -d "$dir" ] || continue
    name=${dir%/}
    name=${name##*/}
    printf '%s %s\n' "$(cat "$dir/.activated" 2>/dev/null || cat "$dir/.uploaded" 2>/dev/null || echo 0)" "$name"
  done | sort -rn | cut -d ' ' -f 2
); do
  n=$((n + 1))
  [ "$n" -gt "$keep" ] || continue
  [ "$tag" != "$cur" ] || continue
  if printf '%s\n' "$mounted" | grep -qxF "$tag"; then
    say "keeping release $tag: a running container still mounts its files"
    continue
  fi
  refs=$(cut -f 2 "$base/releases/$tag/images" 2>/dev/null)
  rm -rf "${base:?}/releases/$tag"
  say "removed release $tag"
  for ref in $refs; do
    # Kept releases keep their images tagged, so `image prune` below never removes them.
    if ! cut -f 2 "$base"/releases/*/images 2>/dev/null | grep -qxF "$ref" \
      && docker rmi "$ref" >/dev/null 2>&1; then
      say "untagged $ref"
    fi
  done
done
# The files of the newest 20 activation units (journal, state, step scripts) are kept.
ls -t "$base"/deploys/*.state 2>/dev/null | tail -n +21 | while read -r state; do
  rm -rf "${state%.state}" "${state%.state}".log "${state%.state}".pid "$state"
done
find "$base/releases" -maxdepth 1 -name '.stage-*' -mmin +60 -exec rm -rf {} + 2>/dev/null
docker image prune -f >&2 || say "warning: docker image prune failed"
exit 0
