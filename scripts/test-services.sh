#!/usr/bin/env bash
# Install and start the real servers the tests use: PostgreSQL (Debian's cluster, a `backless`
# role that may create databases), Redis (the tests start their own redis-server processes, so
# only the package is needed) and s3s-fs, an S3-protocol server (cargo install, cached under
# $BACKLESS_CACHE/tools). Prints `export` lines naming them; scripts/test.sh evaluates them.
#
#   eval "$(scripts/test-services.sh)"
set -euo pipefail

log() { printf '%s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# The package creates one cluster; start whichever exists (on a new machine: 15/main on bookworm).
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -1)
if [ "$status" != online ]; then
    log "starting PostgreSQL $version/$cluster on port $port"
    as_root pg_ctlcluster "$version" "$cluster" start >&2
fi
as_root su postgres -c "psql -q -p $port -v ON_ERROR_STOP=1" >&2 <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backless') THEN
    CREATE ROLE backless LOGIN CREATEDB PASSWORD 'backless';
  END IF;
END $$;
SQL
# Databases left by earlier test runs (each test creates its own).
as_root su postgres -c "psql -At -p $port -c \"SELECT datname FROM pg_database WHERE datname LIKE 'backless_test_%'\"" |
    while read -r db; do as_root su postgres -c "dropdb -p $port --if-exists $db" >&2; done

echo "export BACKLESS_TEST_POSTGRES_URL=postgres://backless:backless@127.0.0.1:$port/postgres"

# s3s-fs 0.14 is the newest that builds with this toolchain (1.95).
tools="${BACKLESS_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}/tools"
if [ ! -x "$tools/bin/s3s-fs" ]; then
    log "installing s3s-fs (cargo install, about 2 minutes)"
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$tools" >&2
fi
echo "export BACKLESS_TEST_S3FS=$tools/bin/s3s-fs"
