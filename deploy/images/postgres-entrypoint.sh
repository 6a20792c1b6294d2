#!/bin/sh
# Starts PostgreSQL as the official image does, for what docker-compose.yml uses of it:
# as root it hands the data directory to "postgres" and runs itself again as that user;
# a new data directory is initialised with POSTGRES_PASSWORD for the superuser
# (POSTGRES_USER, "postgres" by default), then the scripts in /docker-entrypoint-initdb.d
# run against a server that listens on its Unix socket only.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA POSTGRES_USER="${POSTGRES_USER:-postgres}"

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD is not set: the superuser needs a password" >&2
    exit 1
  fi
  secret="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$secret"
  initdb --username="$POSTGRES_USER" --pwfile="$secret" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$secret"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -w -o "-c listen_addresses='' -k /var/run/postgresql" start >/dev/null
  for script in /docker-entrypoint-initdb.d/*; do
    [ -e "$script" ] || continue
    case "$script" in
      *.sh) echo "running $script"; PGHOST=/var/run/postgresql sh "$script" ;;
      *.sql) echo "running $script"; psql -v ON_ERROR_STOP=1 -h /var/run/postgresql \
               --username "$POSTGRES_USER" --dbname postgres -f "$script" ;;
      *) echo "ignoring $script" ;;
    esac
  done
  pg_ctl -w -m fast stop >/dev/null
  # Local connections inside the container keep trusting their user; the network needs
  # a password.
fi

exec postgres -c listen_addresses='*' -k /var/run/postgresql "$@"
