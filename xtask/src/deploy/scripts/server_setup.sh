say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 3; }
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || die "server-setup needs root: ssh as root, or as a user with passwordless sudo"
# shellcheck disable=SC1091
. /etc/os-release
case "${ID:-}" in
  debian | ubuntu) ;;
  *) die "server-setup supports Debian and Ubuntu; this is ${PRETTY_NAME:-unknown}" ;;
esac
packages=()
command -v docker >/dev/null || packages+=(docker.io)
command -v ufw >/dev/null || packages+=(ufw)
command -v flock >/dev/null || packages+=(util-linux)
# The health gate runs on the server (the activation unit) and reads the health URL with curl.
command -v curl >/dev/null || packages+=(curl ca-certificates)
need_compose=1
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; then need_compose=0; fi
if [ ${#packages[@]} -gt 0 ] || [ "$need_compose" = 1 ]; then
  apt-get update -qq
  if [ "$need_compose" = 1 ]; then
    # The v2 plugin where the distribution has it (Ubuntu, Docker's repository), else v1.
    for candidate in docker-compose-v2 docker-compose-plugin docker-compose; do
      if apt-cache show "$candidate" >/dev/null 2>&1; then
        packages+=("$candidate")
        break
      fi
    done
  fi
  say "installing: ${packages[*]}"
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
else
  say "Docker, compose, ufw, flock and curl are already installed"
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl enable --now docker >&2
fi
install -d -m 0750 "$base" "$base/releases"
if [ "$deploy_user" != root ]; then
  usermod -aG docker "$deploy_user"
  chown "$deploy_user:" "$base" "$base/releases"
fi
# ssh first, so enabling the firewall never locks this session out.
ufw allow "$ssh_port/tcp" >&2
ufw allow 80/tcp >&2
ufw allow 443/tcp >&2
ufw --force enable >&2
ufw status >&2
docker version --format 'docker {{.Server.Version}}'
if docker compose version >/dev/null 2>&1; then docker compose version; else docker-compose version --short; fi
