#!/bin/sh
# The lab's stand-in for the official postgres image's entrypoint, for what
# docker-compose.prod.yml relies on: on the first start with an empty $PGDATA,
# create the cluster with the role POSTGRES_USER and its POSTGRES_PASSWORD, create
# POSTGRES_DB and accept password (scram) logins from the network, then run the server.
# The password may come from POSTGRES_PASSWORD_FILE instead, as docker-stack.yml passes it.
# It runs as the image's user (70) from the start: unlike the official entrypoint it
# never starts as root, so it cannot chown a volume that belongs to someone else.
# The password reaches initdb through a pipe from the shell's printf builtin, never argv.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

# Like the official image: `docker run postgres:… -c name=value` means the server.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi

# Like the official image: POSTGRES_PASSWORD_FILE (a swarm secret) instead of the value.
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  # The builtin `read` (the image may have no cat); the file may lack a final newline.
  IFS= read -r POSTGRES_PASSWORD <"$POSTGRES_PASSWORD_FILE" || [ -n "$POSTGRES_PASSWORD" ]
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  # POSTGRES_INITDB_ARGS is split into words on purpose, as the official image does.
  # shellcheck disable=SC2086
  printf '%s\n' "$POSTGRES_PASSWORD" | initdb -D "$PGDATA" \
    --username="$POSTGRES_USER" --pwfile=/dev/stdin \
    --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-}
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode needs no running server, socket or psql; the name is quoted
    # as an identifier, with any `"` doubled.
    quoted=$(printf '%s' "$POSTGRES_DB" | sed 's/"/""/g')
    printf 'CREATE DATABASE "%s";\n' "$quoted" |
      postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
