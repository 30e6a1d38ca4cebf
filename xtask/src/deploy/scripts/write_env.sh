rel="$base/releases/$tag"
[ -d "$rel" ] || die "release directory $rel is missing"
(
  umask 077
  env_file >"$rel/.env.tmp"
  chmod 600 "$rel/.env.tmp"
  mv -f "$rel/.env.tmp" "$rel/.env"
)
say "wrote $rel/.env (mode 0600, $n_variables variables)"
