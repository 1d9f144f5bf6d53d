#!/usr/bin/env bash
# Finds the PostgreSQL server binaries (initdb, pg_ctl, postgres) that the history store's tests
# start (internal/history/historytest) and prints their directory; or says how to install them
# and fails. The tests look in the same places: $POSTGRES_BIN, /usr/lib/postgresql/15/bin, the
# newest /usr/lib/postgresql/*/bin, then initdb on the PATH.
#
#   hack/postgres.sh            # prints e.g. /usr/lib/postgresql/15/bin
#   POSTGRES_BIN=/opt/pg/bin hack/postgres.sh
set -euo pipefail

has() { [[ -x "$1/initdb" && -x "$1/postgres" ]]; }

if [[ -n "${POSTGRES_BIN:-}" ]]; then
  if has "${POSTGRES_BIN}"; then echo "${POSTGRES_BIN}"; exit 0; fi
  echo "POSTGRES_BIN=${POSTGRES_BIN} holds no initdb and postgres binaries" >&2
  exit 1
fi
candidates=(/usr/lib/postgresql/15/bin)
while IFS= read -r d; do candidates+=("$d"); done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV)
if command -v initdb >/dev/null 2>&1; then candidates+=("$(dirname "$(command -v initdb)")"); fi
for d in "${candidates[@]}"; do
  if has "$d"; then echo "$d"; exit 0; fi
done
cat >&2 <<'MSG'
The PostgreSQL server binaries (initdb, postgres) are not on this machine; the history store's
tests start a PostgreSQL 15 server from them. Install them with:

  apt-get update && apt-get install -y postgresql     # Debian, Ubuntu (as root)

No service needs to run: the tests start their own server on a free loopback port. Elsewhere,
set POSTGRES_BIN to the directory that holds initdb and postgres.
MSG
exit 1
