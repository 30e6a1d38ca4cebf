mkdir -p "$base"
exec 9>>"$base/.deploy.lock"
if ! flock -n 9; then
  holder=$(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null || true)
  printf 'held\t%s\n' "${holder:-unknown (no holder file)}"
  exit 0
fi
printf 'id=%s\n%s\n' "$run_id" "$lock_holder" >"$base/.deploy.lock.holder.tmp"
mv -f "$base/.deploy.lock.holder.tmp" "$base/.deploy.lock.holder"
echo locked
# Held until the deploying machine closes this session (or the connection dies);
# `cat` does not inherit the lock's descriptor, so only this shell holds it.
cat >/dev/null 9>&- || true
rm -f "$base/.deploy.lock.holder"
