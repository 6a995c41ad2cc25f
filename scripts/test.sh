#!/usr/bin/env bash
# The test command: set up a fresh machine if needed, lint the tree with ruff ([tool.ruff] in pyproject.toml),
# then run the whole suite against real Orthanc, Firebird, DuckDB and PostgreSQL (the harness starts and stops
# them on 127.0.0.1). A lint finding fails the command, after the tests have run (both results are shown).
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || exit 1
.venv/bin/ruff check --output-format concise .
lint=$?
.venv/bin/python -m pytest pacs_assets_tests -p no:cacheprovider "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: failing." >&2
  rc=1
fi
if [[ $lint -ne 0 ]]; then
  echo "test.sh: ruff check found problems (above): failing." >&2
  [[ $rc -eq 0 ]] && rc=1
fi
exit $rc
