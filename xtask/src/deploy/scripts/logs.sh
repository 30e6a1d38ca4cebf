id=$(containers --filter "label=com.docker.compose.service=$svc" | head -n 1)
[ -n "$id" ] || die "no container of service $svc in compose project $project (see \`cargo xtask status\`)"
follow_args=()
[ -z "$follow" ] || follow_args=(--follow)
exec docker logs --tail "$tail" "${follow_args[@]}" "$id"
