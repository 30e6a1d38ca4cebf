rel="$base/releases/$tag"
stage="$base/releases/.stage-$run_id"
mkdir -p "$base/releases"
rm -rf "$stage"
mkdir "$stage"
upload_tar | base64 -d >"$stage/.upload.tar"
tar -x --no-same-owner -f "$stage/.upload.tar" -C "$stage"
rm -f "$stage/.upload.tar"
if [ -e "$rel" ]; then
  if diff -r -q "$stage/docker-compose.prod.yml" "$rel/docker-compose.prod.yml" >&2 \
    && diff -r -q "$stage/infrastructure" "$rel/infrastructure" >&2; then
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
