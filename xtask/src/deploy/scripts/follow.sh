# Streams the unit's journal (to stderr) until the unit ends, then prints its state file.
dir="$base/deploys/$run_id"
pid=$(cat "$dir.pid")
tail -n +1 -s 0.2 -f --pid="$pid" "$dir.log" >&2 || true
cat "$dir.state"
