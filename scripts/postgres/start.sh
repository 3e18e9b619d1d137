#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for `mlrun tune --storage postgresql://...`.
#   scripts/postgres/start.sh DIR [PORT]    # prints the study URL, e.g. postgresql://postgres@127.0.0.1:55432/mlrun
#   scripts/postgres/stop.sh DIR            # stop it (rm -rf DIR afterwards to throw it away)
# Needs Debian's postgresql package (apt-get install postgresql). Run as root, the server runs as the
# postgres user; run as another user, it runs as that user. Loopback only, trust authentication:
# for tests and single-host studies, not for a shared cluster database.
set -euo pipefail
dir=$(realpath -m "${1:?a state directory}")
port=${2:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: apt-get install postgresql" >&2
  exit 3
fi
as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir" && chmod 700 "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  as_server "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
fi
url="postgresql://postgres@127.0.0.1:$port/mlrun"
if as_server "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  echo "$url"  # already running: starting twice is harmless
  exit 0
fi
# fsync off: a throwaway server; the socket lives in DIR, not /var/run/postgresql.
as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >/dev/null \
  || { tail -20 "$dir/server.log" >&2; exit 1; }
if ! as_server "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlrun'" | grep -q 1; then
  as_server "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mlrun
fi
echo "$url"
