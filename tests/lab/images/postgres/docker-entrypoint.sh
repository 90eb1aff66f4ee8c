#!/bin/bash
# Minimal version of the official postgres image's entrypoint, as the lab needs it:
# initdb on first start with POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, password auth over TCP,
# trust over the local socket (like the official image), listen on 0.0.0.0:5432, CONF_EXTRA appended
# to postgresql.conf (like postgres-autoconf). Runs the server as the postgres user.
set -euo pipefail

if [ "${1:-postgres}" != "postgres" ]; then
    exec "$@"
fi

if [ "$(id -u)" = "0" ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "Error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start >/dev/null
    if [ "$POSTGRES_DB" != "postgres" ]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" >/dev/null
    fi
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] && psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$f"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi

# postgres-autoconf regenerates its configuration from the environment at every start.
{
    echo "# generated at container start by docker-entrypoint.sh"
    echo "listen_addresses = '*'"
    echo "unix_socket_directories = '/var/run/postgresql'"
    printf '%s\n' "${CONF_EXTRA:-}"
} > "$PGDATA/lab-autoconf.conf"
grep -q "include_if_exists = 'lab-autoconf.conf'" "$PGDATA/postgresql.conf" \
    || echo "include_if_exists = 'lab-autoconf.conf'" >> "$PGDATA/postgresql.conf"

exec postgres -D "$PGDATA" "${@:2}"
