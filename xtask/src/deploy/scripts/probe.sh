command -v docker >/dev/null || die "docker is not installed on $(hostname): run \`cargo xtask server-setup\`"
engine=$(docker version --format '{{.Server.Version}}' 2>/dev/null) \
  || die "the Docker engine on $(hostname) does not answer: is dockerd running, and may $(id -un) use it?"
[ ${#compose_cmd[@]} -gt 0 ] || die "$compose_missing on $(hostname): run \`cargo xtask server-setup\`"
for tool in flock diff base64 tar curl setsid; do
  command -v "$tool" >/dev/null || die "$tool is missing on $(hostname)"
done
if [ -d "$base" ]; then
  [ -w "$base" ] || die "$(id -un) cannot write to $base"
else
  [ -w "$(dirname "$base")" ] || die "$base does not exist and $(id -un) cannot create it: run \`cargo xtask server-setup\`"
fi
printf 'docker=%s\n' "$engine"
printf 'compose=%s\n' "${compose_cmd[*]}"
current=$(readlink "$base/current" 2>/dev/null || true)
printf 'current=%s\n' "${current##*/}"
