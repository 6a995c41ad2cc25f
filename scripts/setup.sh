#!/usr/bin/env bash
# Everything a fresh Debian machine needs: system packages, then a virtualenv with pacs_assets installed.
# Idempotent and quick when already done. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install_system_packages.sh
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# Reinstall only when the project's dependencies changed since the last install.
stamp=.venv/.pacs_assets_installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || setup.py -nt $stamp ]]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
  touch "$stamp"
fi
echo "setup: ready (.venv)."
