rel="$base/releases/$tag"
registry_login
compose_in "$rel" pull --quiet "${services[@]}"
: >"$rel/.images.tmp"
for i in "${!services[@]}"; do
  check_digest "${services[i]}" "${references[i]}" "${repositories[i]}" "$rel/.images.tmp"
done
mv -f "$rel/.images.tmp" "$rel/images"
