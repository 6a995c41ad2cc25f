#!/usr/bin/env bash
# The unprivileged system user that runs Dagster and its runs (docs/production.md, Real shares). Idempotent.
#   bash scripts/create_service_user.sh [USER] [STATE_DIR]
# USER (default pacs) gets no login shell and no home; it needs only read access to the NAS mounts
# (mount them read-only for it) and write access to STATE_DIR (the index, DAGSTER_HOME), made if given.
set -euo pipefail
user=${1:-pacs}
state_dir=${2:-}
if ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
  echo "created system user $user"
fi
if [[ -n $state_dir ]]; then
  install -d -m 0750 -o "$user" -g "$user" "$state_dir"
fi
echo "service user $user: uid $(id -u "$user")"
