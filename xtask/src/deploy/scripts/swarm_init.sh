read -r node_state control < <(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')
case "$node_state $control" in
  "active true") say "$(hostname) is already a swarm manager" ;;
  "active false") die "$(hostname) is a worker of another swarm: leave it first (docker swarm leave)" ;;
  *)
    args=()
    [ -z "$advertise_addr" ] || args=(--advertise-addr "$advertise_addr")
    docker swarm init "${args[@]}" >/dev/null || die "docker swarm init failed"
    say "$(hostname): initialised a swarm"
    ;;
esac
# The swarm's ports, from the other nodes only (ufw, as `server-setup` configures it).
if command -v ufw >/dev/null && ufw status | grep -q '^Status: active'; then
  for peer in "${peers[@]}"; do
    ufw allow proto tcp from "$peer" to any port 2377 >/dev/null
    ufw allow proto tcp from "$peer" to any port 7946 >/dev/null
    ufw allow proto udp from "$peer" to any port 7946 >/dev/null
    ufw allow proto udp from "$peer" to any port 4789 >/dev/null
  done
  say "ufw: 2377/tcp, 7946/tcp+udp, 4789/udp open to ${peers[*]:-no other node}"
else
  say "no active ufw: open 2377/tcp, 7946/tcp+udp and 4789/udp between the nodes only, in your firewall"
fi
# For the deploying machine only (captured, never printed): the join token and address.
printf 'manager_addr=%s\n' "$(docker info --format '{{.Swarm.NodeAddr}}')"
printf 'join_token=%s\n' "$(docker swarm join-token -q worker)"
