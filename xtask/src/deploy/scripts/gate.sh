# The health gate, run on the server by the activation unit: every container of the gated
# services running and healthy, then the health URL answering 200 with the backend's health
# JSON: "status":"ok" and, when the current release's tag is a commit, a "revision" starting
# with it. Traefik drops an unhealthy backend's routers and /api/health then falls through to
# the SPA's catch-all router, which answers 200 with index.html: the status alone proves nothing.
cur=$(readlink "$base/current" 2>/dev/null || true)
cur=${cur##*/}
expect=""
[[ ! $cur =~ ^[0-9a-f]{7,40}$ ]] || expect=$cur
deadline=$((SECONDS + gate_timeout))
reported=$SECONDS
while :; do
  why=""
  for svc in "${gate_services[@]}"; do
    ids=$(containers --filter "label=com.docker.compose.service=$svc")
    [ -n "$ids" ] || die "the release is not healthy: $svc: no container (is it in the compose file?)"
    for id in $ids; do
      verdict=$(container_health "$id")
      case $verdict in
        ok) ;;
        fail*) die "the release is not healthy: $svc: ${verdict#fail }" ;;
        *) why="$svc: ${verdict#wait }" ;;
      esac
    done
  done
  if [ -z "$why" ] && [ -n "$gate_url" ]; then
    rc=0
    answer=$(curl -sS --max-time 5 -w '\n%{http_code}' "${curl_args[@]}" "$gate_url" 2>/dev/null) || rc=$?
    code=${answer##*$'\n'}
    body=${answer%$'\n'*}
    body=${body//[$'\n\r\t']/ }
    if [ "$rc" != 0 ]; then
      why="$gate_url: no answer (curl exit $rc)"
    elif [ "$code" != 200 ]; then
      why="$gate_url answered $code"
    elif [[ $body != *'"status":"ok"'* ]]; then
      why="$gate_url answered 200 but not the backend's health JSON (${body:0:80})"
    elif [ -n "$expect" ] && [[ $body != *"\"revision\":\"$expect"* ]]; then
      why="$gate_url answers another revision than $expect (still the release before?)"
    fi
  fi
  if [ -z "$why" ]; then
    url_ok=""
    [ -z "$gate_url" ] || url_ok=", $gate_url answers 200 with the health JSON of the backend${expect:+ at $expect}"
    say "healthy: ${gate_services[*]}$url_ok"
    exit 0
  fi
  [ "$SECONDS" -lt "$deadline" ] || die "the release is not healthy after $gate_timeout s: $why"
  if [ $((SECONDS - reported)) -ge 5 ]; then
    say "waiting: $why"
    reported=$SECONDS
  fi
  sleep 0.3
done
