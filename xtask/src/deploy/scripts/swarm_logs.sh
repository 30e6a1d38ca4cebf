docker service inspect "${stack}_$svc" >/dev/null 2>&1 \
  || die "no service ${stack}_$svc in the swarm (see \`cargo xtask status --mode swarm\`)"
follow_args=()
[ -z "$follow" ] || follow_args=(--follow)
exec docker service logs --timestamps --tail "$tail" "${follow_args[@]}" "${stack}_$svc"
