mkdir -p "$base"
exec 9>>"$base/.deploy.lock"
# active_unit: the run id of an activation unit that is still alive, waiting for the lock
# (launch.sh started it while its deploying machine held the lock) or holding it.
active_unit() {
  local state pid
  for state in "$base"/deploys/*.state; do
    [ -e "$state" ] || continue
    grep -qx 'result=running' "$state" || continue
    pid=$(cat "${state%.state}.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid"; then
      state=${state##*/}
      printf '%s\n' "${state%.state}"
      return
    fi
  done
}
waited=0
while :; do
  unit=""
  if flock -n 9; then
    unit=$(active_unit)
    [ -n "$unit" ] || break
    # Taken in the moment a deploying machine hands the lock to its unit: not ours.
    flock -u 9
  else
    unit=$(active_unit)
    if [ -z "$unit" ]; then
      holder=$(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null || true)
      printf 'held\t%s\n' "${holder:-unknown (no holder file)}"
      exit 0
    fi
  fi
  # An activation runs on the server, bounded by its health gates: wait for it.
  if [ "$waited" = 0 ]; then
    printf 'waiting\tthe activation of run %s (journal %s)\n' "$unit" "$base/deploys/$unit.log"
  fi
  if [ "$waited" -ge "$lock_wait" ]; then
    printf 'held\tthe activation of run %s, still running after %s s (journal %s)\n' "$unit" "$waited" "$base/deploys/$unit.log"
    exit 0
  fi
  sleep 1
  waited=$((waited + 1))
done
printf 'id=%s\n%s\n' "$run_id" "$lock_holder" >"$base/.deploy.lock.holder.tmp"
mv -f "$base/.deploy.lock.holder.tmp" "$base/.deploy.lock.holder"
echo locked
# Held until the deploying machine closes this session (or the connection dies), or hands
# the lock to its activation unit; `cat` does not inherit the lock's descriptor, so only
# this shell holds it.
cat >/dev/null 9>&- || true
rm -f "$base/.deploy.lock.holder"
