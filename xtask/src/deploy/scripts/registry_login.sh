# registry_login: `docker login $registry` as $registry_user when one is set, the password read
# from the here-document `registry_password` (never in argv); logged out when the script exits,
# so the token serves this step only and none stays on the server.
registry_login() {
  [ -n "$registry_user" ] || return 0
  local login
  login=$(registry_password | docker login "$registry" --username "$registry_user" --password-stdin 2>&1) \
    || die "docker login $registry failed: $login"
  trap 'docker logout "$registry" >/dev/null 2>&1 || true' EXIT
}
