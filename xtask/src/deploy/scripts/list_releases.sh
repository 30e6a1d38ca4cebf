cur=$(readlink "$base/current" 2>/dev/null || true)
printf 'current\t%s\n' "${cur##*/}"
for dir in "$base"/releases/*/; do
  [ -d "$dir" ] || continue
  name=${dir%/}
  name=${name##*/}
  printf 'release\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" \
    "$(cat "$dir/.uploaded" 2>/dev/null)" "$(cat "$dir/.activated" 2>/dev/null)" \
    "$(cat "$dir/.result" 2>/dev/null)" "$(cat "$dir/.previous" 2>/dev/null)" \
    "$(head -n 1 "$dir/images" 2>/dev/null | cut -f 2 | cut -d / -f 1)"
done
# Only the one non-secret line of the current `.env`: the health URL's host.
printf 'domain\t%s\n' "$(sed -n "s/^DOMAIN='\(.*\)'\$/\1/p" "$base/current/.env" 2>/dev/null)"
if [ -e "$base/.deploy.lock" ] && ! flock -n "$base/.deploy.lock" true 2>/dev/null; then
  printf 'lock\t%s\n' "$(tail -n +2 "$base/.deploy.lock.holder" 2>/dev/null)"
fi
