rel="$base/releases/$tag"
stage="$base/releases/.stage-$run_id"
mkdir -p "$base/releases"
rm -rf "$stage"
mkdir "$stage"
upload_tar | base64 -d >"$stage/.upload.tar"
tar -x --no-same-owner -f "$stage/.upload.tar" -C "$stage"
rm -f "$stage/.upload.tar"
if [ -e "$rel" ]; then
  # A lab's override (absent from production releases) must match too, or be absent from both.
  override=docker-compose.override.yml
  same_override=1
  if [ -e "$stage/$override" ] || [ -e "$rel/$override" ]; then
    diff -q "$stage/$override" "$rel/$override" >&2 || same_override=0
  fi
  if diff -r -q "$stage/docker-compose.prod.yml" "$rel/docker-compose.prod.yml" >&2 \
    && diff -r -q "$stage/infrastructure" "$rel/infrastructure" >&2 \
    && [ "$same_override" = 1 ]; then
    rm -rf "$stage"
    say "release $tag is already on the server with the same files: reusing it"
  else
    rm -rf "$stage"
    die "release $tag is already on the server with other files (listed above): a tag names one commit, so deploy a new commit"
  fi
else
  date +%s >"$stage/.uploaded"
  mv -T "$stage" "$rel"
  say "uploaded releases/$tag"
fi
