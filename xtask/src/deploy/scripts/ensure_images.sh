rel="$base/releases/$tag"
[ -f "$rel/images" ] || die "release $(basename "$rel") has no images file: it was never pulled completely"
missing=()
while IFS=$'\t' read -r _ ref digest; do
  repo=${ref%:*}
  if docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" 2>/dev/null | grep -qxF "$repo@$digest"; then continue; fi
  missing+=("$repo@$digest")
done <"$rel/images"
[ ${#missing[@]} -gt 0 ] || exit 0
say "pulling ${#missing[@]} image(s) of the release by digest"
registry_login
for image in "${missing[@]}"; do
  docker pull --quiet "$image" >/dev/null || die "cannot pull $image: set the registry credentials, or roll back to a release whose images are still on the server"
done
while IFS=$'\t' read -r _ ref digest; do
  docker tag "${ref%:*}@$digest" "$ref"
done <"$rel/images"
