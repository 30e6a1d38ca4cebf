cur=$(readlink "$base/current")
cur=${cur##*/}
# Not `mapfile < <(...)`: a failure in a process substitution would go unnoticed.
changed_list=$(changed_services)
read -r -a changed <<<"${changed_list//$'\n'/ }"
# Everything but the app services that switch side by side: PostgreSQL, Traefik and the
# monitoring services are recreated in place (stop first) when they changed, as are app
# services without a running container (a first deploy); unchanged ones are not touched.
others_list=$(
  compose "${profile_args[@]}" config --services | while read -r svc; do
    in_list "$svc" "${switched[@]}" || printf '%s\n' "$svc"
  done
  unchanged_or_missing "${changed[@]}"
)
read -r -a others <<<"${others_list//$'\n'/ }"
# `up` without services would take all of them, the changed app services included.
[ ${#others[@]} -eq 0 ] || compose "${profile_args[@]}" up -d --remove-orphans "${others[@]}"
if [ ${#changed[@]} -gt 0 ]; then
  switch_services "${changed[@]}" || die "the new release did not get healthy beside the running one (logs above); nothing was switched"
fi
mapfile -t stale < <(stale_services "$cur")
if [ ${#stale[@]} -gt 0 ]; then
  say "mounted configuration changed for: ${stale[*]}; recreating them"
  compose "${profile_args[@]}" up -d --no-deps --force-recreate "${stale[@]}"
fi
