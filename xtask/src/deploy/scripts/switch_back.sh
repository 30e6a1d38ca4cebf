prev=$(cat "$base/releases/$tag/.previous" 2>/dev/null || true)
if [ -z "$prev" ] || [ ! -e "$base/releases/$prev/.env" ]; then
  die "there is no previous release to go back to: $tag stays current"
fi
set_current "releases/$prev"
date +%s >"$base/releases/$prev/.activated"
printf 'current=%s\n' "$prev"
say "current -> releases/$prev (back from $tag)"
