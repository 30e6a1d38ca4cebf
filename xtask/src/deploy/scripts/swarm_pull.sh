rel="$base/releases/$tag"
[ -d "$rel" ] || die "release directory $rel is missing"
registry_login
# Pulled here as well as on each node: the manager checks the digest once, before any
# service changes, and `docker stack deploy --resolve-image always` pins the same one.
: >"$rel/.images.tmp"
for i in "${!services[@]}"; do
  docker pull --quiet "${references[i]}" >/dev/null || die "pulling ${references[i]} failed"
  check_digest "${services[i]}" "${references[i]}" "${repositories[i]}" "$rel/.images.tmp"
done
mv -f "$rel/.images.tmp" "$rel/images"
