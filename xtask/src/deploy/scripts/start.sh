cur=$(readlink "$base/current")
cur=${cur##*/}
compose "${profile_args[@]}" up -d --remove-orphans
mapfile -t stale < <(stale_services "$cur")
if [ ${#stale[@]} -gt 0 ]; then
  say "mounted configuration changed for: ${stale[*]}; recreating them"
  compose "${profile_args[@]}" up -d --no-deps --force-recreate "${stale[@]}"
fi
