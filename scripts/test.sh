#!/usr/bin/env bash
# The test command: set up a fresh machine if needed, then run the whole suite against real Orthanc,
# Firebird, DuckDB and PostgreSQL (the harness starts and stops them on 127.0.0.1).
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest pacs_assets_tests -p no:cacheprovider "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: failing." >&2
  exit 1
fi
exit $rc
