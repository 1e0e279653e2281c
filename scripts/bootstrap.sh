#!/usr/bin/env bash
# Set up .venv with everything the product needs. `--dev` adds the test tools
# (and Chromium for the Prefect UI test when apt is available and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
# torch first and pinned: an open range would pull a multi-GB CUDA build on a CPU machine.
.venv/bin/pip install -q "torch==2.13.0"
extras="train"
if [ "${1:-}" = "--dev" ]; then
  extras="train,docker,dev"
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the Prefect UI browser test will be skipped" >&2
  fi
  # PgBouncer in transaction mode stands in for Supabase's pooler in the Supabase tests.
  if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null) \
      || echo "warning: could not install pgbouncer; the Supabase pooler tests will be skipped" >&2
  fi
fi
.venv/bin/pip install -q -e ".[$extras]"
