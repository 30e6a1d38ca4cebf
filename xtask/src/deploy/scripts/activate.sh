# The activation unit: switch, start, health gate, and on a failure back to the previous
# release, health-gated the same way; then cleanup (after success) and the record, all on the
# server, detached from the deploying machine (launch.sh). It takes the deploy lock once the
# deploying machine lets go of it, and its step processes inherit the lock's descriptor: the
# lock goes only when the unit and everything it started have ended.
# Everything goes to the journal; the state file says how the run stands (`result=`).
dir="$base/deploys/$run_id"
exec >>"$dir.log" 2>&1
started=$(date +%s)
write_state() {
  {
    printf 'run=%s\nkind=%s\ntag=%s\npid=%s\nstarted=%s\nresult=%s\n' \
      "$run_id" "$kind" "$tag" "$$" "$started" "$1"
    [ -z "${previous:-}" ] || printf 'previous=%s\n' "$previous"
    [ -z "${failed_step:-}" ] || printf 'failed_step=%s\n' "$failed_step"
    [ -z "${reason:-}" ] || printf 'reason=%s\n' "$reason"
    [ "$1" = running ] || printf 'ended=%s\n' "$(date +%s)"
  } >"$dir.state.tmp"
  mv -f "$dir.state.tmp" "$dir.state"
}
write_state running
printf '%s\n' "$$" >"$dir.pid"
say "activation of $tag (run $run_id, pid $$): waiting for the deploying machine to hand over the deploy lock"
exec 9>>"$base/.deploy.lock"
if ! flock -w "$lock_wait" 9; then
  reason="the deploy lock was not handed over within $lock_wait s: nothing was switched"
  say "error: $reason"
  write_state failed
  exit 3
fi
if [ -e "$dir/cancelled" ]; then
  reason="cancelled: the deploying machine gave up on this unit before it started"
  say "error: $reason"
  write_state failed
  exit 3
fi
printf 'id=%s\nactivation of %s (run %s, pid %s on %s)\n' "$run_id" "$tag" "$run_id" "$$" "$(hostname)" \
  >"$base/.deploy.lock.holder.tmp"
mv -f "$base/.deploy.lock.holder.tmp" "$base/.deploy.lock.holder"

# json TEXT: TEXT as a JSON string.
json() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//[$'\001'-$'\037']/}
  printf '"%s"' "$s"
}
durations=""
# run_steps NAME:FILE...: runs the steps in order until one fails (then `failed_step` and
# `reason`, the last error it printed); each one's duration goes to the record.
run_steps() {
  local entry name file t0 rc
  for entry in "$@"; do
    name=${entry%%:*}
    file=${entry#*:}
    say "==> $name"
    t0=$(date +%s%N)
    rc=0
    bash "$dir/$file" || rc=$?
    local ms
    ms=$((($(date +%s%N) - t0) / 1000000))
    durations+=",$(json "$name"):$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
    if [ "$rc" != 0 ]; then
      failed_step=$name
      reason=$(grep "^error: " "$dir.log" | tail -n 1 || true)
      reason=${reason#error: }
      say "<== $name failed (exit $rc) after $ms ms"
      return 1
    fi
    say "<== $name: ok in $ms ms"
  done
}
write_state running
result=ok
if ! run_steps "${activate_steps[@]}"; then
  result=rolled-back
  failed=$failed_step
  why=$reason
  say "$tag is not healthy ($failed: $why): going back to the release that ran before"
  if ! run_steps "${fall_back_steps[@]}"; then
    result=failed
    reason="$why; going back failed too, at $failed_step: $reason"
  else
    reason=$why
  fi
  failed_step=$failed
else
  # Best effort: a failure here never fails the deploy.
  for step in "${after_success_steps[@]}"; do
    run_steps "$step" || say "warning: ${step%%:*} failed, but $tag is deployed and healthy"
    failed_step=""
    reason=""
  done
fi
previous=$(cat "$base/releases/$tag/.previous" 2>/dev/null || true)
case $record_head in *'{') sep="" ;; *) sep="," ;; esac
error=null
[ "$result" = ok ] || error=$(json "${failed_step}: $reason")
printf '%s%s%s},"previous":%s,"result":%s,"error":%s}\n' "$record_head" "$sep" "${durations#,}" \
  "$(json "$previous")" "$(json "$result")" "$error" >>"$base/releases.jsonl"
[ ! -d "$base/releases/$tag" ] || { [ "$result" = ok ] && echo ok || echo failed; } >"$base/releases/$tag/.result"
rm -f "$base/.deploy.lock.holder"
say "==> result: $result"
write_state "$result"
