state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$state" = active ]; then
  say "$(hostname) is already in a swarm"
else
  # The API takes the token in the request body, from stdin: `docker swarm join --token`
  # would put it in an argument list.
  sock=${DOCKER_HOST:-unix:///var/run/docker.sock}
  sock=${sock#unix://}
  command -v curl >/dev/null || die "curl is missing on $(hostname)"
  adv=
  [ -z "$advertise_addr" ] || adv=$(printf ',"AdvertiseAddr":"%s"' "$advertise_addr")
  out=$(printf '{"ListenAddr":"0.0.0.0:2377","RemoteAddrs":["%s:2377"],"JoinToken":"%s"%s}' \
    "$manager_addr" "$(join_token)" "$adv" \
    | curl -sS --unix-socket "$sock" -H 'Content-Type: application/json' --data-binary @- \
      -w '\n%{http_code}' http://localhost/swarm/join) || die "joining the swarm failed: $out"
  [ "${out##*$'\n'}" = 200 ] || die "joining the swarm at $manager_addr failed: ${out%$'\n'*}"
  say "$(hostname) joined the swarm at $manager_addr"
fi
if command -v ufw >/dev/null && ufw status | grep -q '^Status: active'; then
  for peer in "${peers[@]}"; do
    ufw allow proto tcp from "$peer" to any port 7946 >/dev/null
    ufw allow proto udp from "$peer" to any port 7946 >/dev/null
    ufw allow proto udp from "$peer" to any port 4789 >/dev/null
  done
fi
printf 'node=%s\n' "$(docker info --format '{{.Swarm.NodeID}}')"
