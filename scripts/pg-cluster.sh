#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for dtc's tests, demo and benchmark.
#
#   scripts/pg-cluster.sh start     # both clusters; prints `export DTC_PG_...` lines
#   scripts/pg-cluster.sh env       # the same lines, for clusters already running
#   scripts/pg-cluster.sh restart   # fast-stop and start `main` again (data kept)
#   scripts/pg-cluster.sh status
#   scripts/pg-cluster.sh stop      # stops both and removes their files
#
# `main`:  max_prepared_transactions=64, fsync=on, synchronous_commit=on,
#          on 127.0.0.1:$DTC_PG_PORT (default 54329) and a socket in $DTC_PG_BASE/sock.
# `no2pc`: PostgreSQL's default max_prepared_transactions=0, on port + 1, for
#          the test of the configuration error.
#
# Roles: `dtc` (owns database `dtc`, not a superuser) and `dtc_limited`
# (may connect, holds no table privileges). Authentication is `trust`, on
# loopback and the socket only: a cluster for tests, never for data.
#
# initdb refuses to run as root, so as root the clusters run as the
# `postgres` user (created if missing). Without a PostgreSQL server on the
# machine, root installs Debian's `postgresql` package; anyone else gets an
# error saying so. Everything is bounded: each wait gives up after 60 s.
set -euo pipefail

BASE=${DTC_PG_BASE:-/tmp/dtc-pg}
PORT=${DTC_PG_PORT:-54329}
PORT_NO2PC=$((PORT + 1))
SOCK=$BASE/sock

log() { printf 'pg-cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && { echo "$d"; return 0; }
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

BINDIR=$(find_bindir || true)
install_server() {
    [ "$(id -u)" = 0 ] || die "no PostgreSQL server found (initdb, pg_ctl); install Debian's postgresql package"
    command -v apt-get >/dev/null || die "no PostgreSQL server found and no apt-get to install one"
    log "no PostgreSQL server found: installing Debian's postgresql package"
    timeout 600 apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq postgresql >&2
    BINDIR=$(find_bindir) || die "postgresql installed, but no initdb found"
}

RUN_AS=""
if [ "$(id -u)" = 0 ]; then
    RUN_AS=postgres
fi
as_user() {
    if [ -n "$RUN_AS" ]; then
        runuser -u "$RUN_AS" -- "$@"
    else
        "$@"
    fi
}
ensure_user() {
    [ -n "$RUN_AS" ] || return 0
    if ! id "$RUN_AS" >/dev/null 2>&1; then
        log "creating the system user $RUN_AS"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$RUN_AS"
    fi
}

url() { echo "postgresql://dtc@127.0.0.1:$1/dtc"; }

print_env() {
    echo "export DTC_PG_BASE=$BASE"
    echo "export DTC_PG_URL=$(url "$PORT")"
    echo "export DTC_PG_URL_NO2PC=$(url "$PORT_NO2PC")"
    echo "export DTC_PG_URL_LIMITED=postgresql://dtc_limited@127.0.0.1:$PORT/dtc"
}

running() { [ -n "$BINDIR" ] && [ -d "$BASE/$1" ] && as_user "$BINDIR/pg_ctl" -D "$BASE/$1" status >/dev/null 2>&1; }

psql_as() { # psql_as PORT SQL...: each SQL on its own, as the bootstrap superuser over the socket
    local port=$1 args=()
    shift
    for sql in "$@"; do args+=(-c "$sql"); done
    as_user "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -U postgres -d postgres "${args[@]}" >&2
}

start_one() { # start_one NAME PORT MAX_PREPARED
    local name=$1 port=$2 prepared=$3 data=$BASE/$1
    if running "$name"; then
        log "$name already running on port $port"
        return 0
    fi
    rm -rf "$data"
    as_user "$BINDIR/initdb" -D "$data" -U postgres --auth=trust --no-locale -E UTF8 >"$BASE/$name.initdb.log" 2>&1 ||
        { cat "$BASE/$name.initdb.log" >&2; die "initdb $name failed"; }
    cat >>"$data/postgresql.conf" <<CONF
# dtc's throwaway test cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SOCK'
max_prepared_transactions = $prepared
max_connections = 100
fsync = on
synchronous_commit = on
shared_buffers = 64MB
log_min_messages = warning
CONF
    as_user "$BINDIR/pg_ctl" -D "$data" -l "$BASE/$name.log" -w -t 60 start >&2 ||
        { tail -n 30 "$BASE/$name.log" >&2 || true; die "the $name cluster did not start"; }
    psql_as "$port" "CREATE ROLE dtc LOGIN" "CREATE ROLE dtc_limited LOGIN" "CREATE DATABASE dtc OWNER dtc"
    log "$name running on 127.0.0.1:$port (max_prepared_transactions=$prepared)"
}

start() {
    [ -n "$BINDIR" ] || install_server
    ensure_user
    mkdir -p "$BASE" "$SOCK"
    [ -z "$RUN_AS" ] || chown "$RUN_AS" "$BASE" "$SOCK"
    start_one main "$PORT" 64
    start_one no2pc "$PORT_NO2PC" 0
    print_env
}

stop_one() {
    if running "$1"; then
        as_user "$BINDIR/pg_ctl" -D "$BASE/$1" -m fast -w -t 60 stop >&2 || log "stopping $1 failed"
    fi
}

case "${1:-}" in
    start) start ;;
    env) print_env ;;
    restart)
        running main || die "main is not running"
        as_user "$BINDIR/pg_ctl" -D "$BASE/main" -l "$BASE/main.log" -m fast -w -t 60 restart >&2
        ;;
    status)
        for c in main no2pc; do
            if running "$c"; then echo "$c running"; else echo "$c stopped"; fi
        done
        ;;
    stop)
        stop_one main
        stop_one no2pc
        rm -rf "$BASE"
        ;;
    *) die "usage: $0 start|env|restart|status|stop" ;;
esac
