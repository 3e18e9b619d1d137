#!/usr/bin/env bash
# Stop the server started by scripts/postgres/start.sh DIR (the data stays in DIR until you remove it).
#   scripts/postgres/stop.sh DIR
set -euo pipefail
dir=$(realpath -m "${1:?a state directory}")
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ] || exit 0
if [ "$(id -u)" = 0 ]; then
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
else
  "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
fi
