cur=$(readlink "$base/current")
cur=${cur##*/}
# Not `mapfile < <(...)`: a failure in a process substitution would go unnoticed.
changed_list=$(changed_services)
read -r -a changed <<<"${changed_list//$'\n'/ }"
if [ ${#changed[@]} -gt 0 ]; then
  switch_services "${changed[@]}" || die "the new release did not get healthy beside the running one (logs above); nothing was switched"
fi
# Then everything else, with the release's profiles: PostgreSQL, Traefik and the monitoring
# services are recreated in place (stop first) when they changed, as are app services without
# a running container (a first deploy). The switched app services already run the current
# release's configuration, so `up` leaves them alone, as it does every unchanged service.
# (All services, not a list: compose v1's `config --services` ignores profiles.)
compose "${profile_args[@]}" up -d --remove-orphans
mapfile -t stale < <(stale_services "$cur")
if [ ${#stale[@]} -gt 0 ]; then
  say "mounted configuration changed for: ${stale[*]}; recreating them"
  compose "${profile_args[@]}" up -d --no-deps --force-recreate "${stale[@]}"
fi
