rel="$base/releases/$tag"
for file in docker-compose.prod.yml .env images; do
  [ -e "$rel/$file" ] || die "release $tag is incomplete on the server: $file is missing"
done
prev=$(readlink "$base/current" 2>/dev/null || true)
prev=${prev##*/}
if [ "$prev" != "$tag" ]; then
  printf '%s\n' "$prev" >"$rel/.previous"
else
  prev=$(cat "$rel/.previous" 2>/dev/null || true)
fi
set_current "releases/$tag"
for name in docker-compose.prod.yml .env infrastructure; do
  if [ -e "$base/$name" ] && [ ! -L "$base/$name" ]; then
    # A file from before release directories: keep it, out of the way.
    mkdir -p "$base/pre-releases"
    mv "$base/$name" "$base/pre-releases/"
    say "moved $base/$name to $base/pre-releases/: it is a link into current/ now"
  fi
  ln -sfn "current/$name" "$base/.link.tmp"
  mv -fT "$base/.link.tmp" "$base/$name"
done
date +%s >"$rel/.activated"
printf 'previous=%s\n' "$prev"
say "current -> releases/$tag (before: ${prev:-none})"
