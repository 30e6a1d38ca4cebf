# Starts the activation unit (activate.sh) detached from this ssh session, so it finishes
# even when the connection dies: a transient systemd service where systemd runs (as root),
# else a new session (setsid). The unit's files go to deploys/<run id>/ first. The deploying
# machine still holds the deploy lock; the unit waits for it, and until it has it, lock.sh
# sends other deploys away because this unit is alive (see `active_unit`).
dir="$base/deploys/$run_id"
mkdir -p "$base/deploys"
chmod 700 "$base/deploys"
[ ! -e "$dir" ] || die "$dir exists already: a run id is never reused"
mkdir "$dir"
unit_files | while read -r name data; do
  printf '%s' "$data" | base64 -d >"$dir/$name"
done
[ -s "$dir/activate.sh" ] || die "the unit's files did not arrive in $dir"
if [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
  systemd-run --quiet --collect --unit "timemanager-deploy-$run_id" \
    --description "Time Manager activation of run $run_id" -- bash "$dir/activate.sh"
  how="systemd unit timemanager-deploy-$run_id"
else
  setsid -f bash "$dir/activate.sh" </dev/null >/dev/null 2>&1
  how="setsid"
fi
for _ in $(seq 100); do
  [ ! -s "$dir.pid" ] || break
  sleep 0.1
done
if [ ! -s "$dir.pid" ]; then
  # Should it start later, it finds this and leaves when it gets the lock.
  touch "$dir/cancelled"
  die "the activation unit did not start within 10 s ($how): see $dir.log"
fi
printf 'unit=%s, pid %s, journal %s\n' "$how" "$(cat "$dir.pid")" "$dir.log"
