printf '%s\n' "$record" >>"$base/releases.jsonl"
rel="$base/releases/$tag"
[ -z "$result" ] || [ ! -d "$rel" ] || printf '%s\n' "$result" >"$rel/.result"
