rel="$base/releases/$tag"
[ -d "$rel" ] || die "release directory $rel is missing"
stack_file >"$rel/.docker-stack.yml.tmp"
mv -f "$rel/.docker-stack.yml.tmp" "$rel/docker-stack.yml"
# A secret's content cannot change: its name carries a hash of the content, so an unchanged
# secret keeps its name (no service restarts for it) and a new value gets a new secret.
# The content goes from the here-document to `docker secret create -` through a pipe.
for i in "${!secret_names[@]}"; do
  name=${secret_names[i]}
  if docker secret inspect "$name" >/dev/null 2>&1; then
    say "secret $name: unchanged"
  else
    "secret_$i" | head -c -1 | docker secret create --label "timemanager.secret=${secret_keys[i]}" "$name" - >/dev/null \
      || die "creating the secret $name failed"
    say "secret $name: created"
  fi
done
# The names every stack deploy uses from now on, whichever release it deploys: a rollback
# changes the code, not the secrets.
(
  umask 077
  for i in "${!secret_names[@]}"; do
    printf "%s='%s'\n" "${secret_vars[i]}" "${secret_names[i]}"
  done >"$base/.swarm-secrets.tmp"
  mv -f "$base/.swarm-secrets.tmp" "$base/swarm-secrets.env"
)
