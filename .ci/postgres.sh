#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: `start DIR` prints its DSN, `stop DIR` ends it.
#
#   dsn=$(.ci/postgres.sh start /tmp/pg) && export ASYNCART_TEST_PG=$dsn  # ... tests ...
#   .ci/postgres.sh stop /tmp/pg
#
# The cluster lives in DIR/data and listens on 127.0.0.1 only (no Unix socket), on a free
# port. User postgres is trusted (loopback only, test data only); any other user needs its
# password. pg_stat_statements is loaded (the tests count the queries a call makes).
# Throwaway: initdb does not sync its files and stop does not checkpoint (the server's own
# fsync stays on). As root, initdb and pg_ctl run as user postgres (PostgreSQL refuses to
# run as root), who then owns DIR; as anyone else, as that user. initdb and pg_ctl come from
# PATH, else from /usr/lib/postgresql/*/bin (Debian's postgresql package).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$2

pg_bin() {  # the path of a PostgreSQL server program
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
        return
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
    [[ -n $found ]] || { echo "$0: $1 not found: install PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
    echo "$found"
}

as_owner() {  # run a command as the cluster's owner
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {  # a port nobody listens on now (the kernel's pick)
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case $action in
start)
    initdb=$(pg_bin initdb)
    pg_ctl=$(pg_bin pg_ctl)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ ! -e $dir/data ]] || { echo "$0: $dir/data exists: stop that server and remove it first" >&2; exit 1; }
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
        as_owner test -w "$dir" || { echo "$0: user postgres cannot write $dir (a parent folder is closed to it): use a folder such as /tmp/NAME" >&2; exit 1; }
    fi
    as_owner "$initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # postgres is trusted (the tests' admin); any other user needs its password (the tests
    # check that a wrong one is refused).
    printf 'host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' \
        | as_owner tee "$dir/data/pg_hba.conf" >/dev/null
    for attempt in 1 2 3 4 5; do  # another process may take the port between pick and listen
        port=$(free_port)
        if as_owner "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
            "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories= -c shared_preload_libraries=pg_stat_statements -c max_connections=200" \
            >"$dir/pg_ctl.log" 2>&1; then
            echo "$port" >"$dir/port"
            echo "postgresql://postgres@127.0.0.1:$port/postgres"
            exit 0
        fi
        grep -q "could not bind" "$dir/server.log" 2>/dev/null || break
    done
    cat "$dir/pg_ctl.log" "$dir/server.log" >&2 2>/dev/null || true
    exit 1
    ;;
stop)
    [[ -d $dir/data ]] || exit 0  # nothing started there
    as_owner "$(pg_bin pg_ctl)" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
*)
    usage
    ;;
esac
