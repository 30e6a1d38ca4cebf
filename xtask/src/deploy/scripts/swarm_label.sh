# Exactly one node holds PostgreSQL's volume. The label is never moved here: a moved label
# would start PostgreSQL on an empty volume elsewhere (README "Scaling out" says how to move it).
target=$(docker node inspect --format '{{.ID}}' "$db_node") || die "no swarm node $db_node"
for id in $(docker node ls -q); do
  [ "$id" != "$target" ] || continue
  if [ "$(docker node inspect --format '{{index .Spec.Labels "timemanager.db"}}' "$id")" = true ]; then
    die "node $(docker node inspect --format '{{.Description.Hostname}}' "$id") already has timemanager.db=true: it holds PostgreSQL's volume; moving it is a manual step (README \"Scaling out\")"
  fi
done
docker node update --label-add timemanager.db=true "$target" >/dev/null
docker node ls --format '{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}' >&2
say "timemanager.db=true on $(docker node inspect --format '{{.Description.Hostname}}' "$target")"
