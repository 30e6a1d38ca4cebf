command -v docker >/dev/null || die "docker is not installed on $(hostname): run \`cargo xtask server-setup\`"
engine=$(docker version --format '{{.Server.Version}}' 2>/dev/null) \
  || die "the Docker engine on $(hostname) does not answer: is dockerd running, and may $(id -un) use it?"
read -r node_state control < <(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')
case "$node_state $control" in
  "active true") ;;
  "active false") die "$(hostname) is a swarm worker: deploy to a manager (--host)" ;;
  *) die "$(hostname) is in no swarm (state $node_state): run \`cargo xtask swarm-setup --host ...\` first" ;;
esac
for tool in flock diff base64 tar; do
  command -v "$tool" >/dev/null || die "$tool is missing on $(hostname)"
done
if [ -d "$base" ]; then
  [ -w "$base" ] || die "$(id -un) cannot write to $base"
else
  [ -w "$(dirname "$base")" ] || die "$base does not exist and $(id -un) cannot create it: run \`cargo xtask server-setup\`"
fi
# PostgreSQL's volume is on one node: exactly one must carry the label.
db_nodes=$(docker node ls -q | xargs docker node inspect --format '{{.Description.Hostname}} {{index .Spec.Labels "timemanager.db"}}' | awk '$2 == "true" { print $1 }')
case $(printf '%s' "$db_nodes" | grep -c .) in
  1) ;;
  0) die "no swarm node has the label timemanager.db=true: run \`cargo xtask swarm-setup\` (--db-node)" ;;
  *) die "several nodes have the label timemanager.db=true ($(echo $db_nodes)): PostgreSQL's volume is on one of them; remove the label from the others" ;;
esac
printf 'docker=%s\n' "$engine"
nodes=$(docker node ls --format '{{.Hostname}}({{.Status}},{{.Availability}})' | tr '\n' ' ')
say "swarm nodes: $nodes; database node: $db_nodes"
current=$(readlink "$base/current" 2>/dev/null || true)
printf 'current=%s\n' "${current##*/}"
