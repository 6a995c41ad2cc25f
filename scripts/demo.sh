#!/usr/bin/env bash
# The demo: set up a fresh machine if needed, make sample NAS devices, start a private Orthanc on
# 127.0.0.1:8042 and open `dagster dev` on http://127.0.0.1:3000 with every NAS graph ready to
# materialize. Ctrl-C stops Dagster and Orthanc (by PID). Everything lives under var/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/var/demo

bash scripts/setup.sh
source .venv/bin/activate

if [[ ! -f $DEMO/pacs.yaml ]]; then
  pacs sample --out "$DEMO"
fi
python -m pacs_assets_tests.services.orthanc start --dir "$DEMO/orthanc" --http-port "${ORTHANC_HTTP_PORT:-8042}" --dicom-port "${ORTHANC_DICOM_PORT:-4242}"
trap 'python -m pacs_assets_tests.services.orthanc stop --dir "$DEMO/orthanc" || true' EXIT

set -a
source "$DEMO/orthanc/orthanc.env"   # ORTHANC_USERNAME / ORTHANC_PASSWORD of this private Orthanc
[[ -f $DEMO/firebird.env ]] && source "$DEMO/firebird.env"
set +a
export PACS_CONFIG=$DEMO/pacs.yaml
export DAGSTER_HOME=$DEMO/dagster_home
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
# For a second terminal (`source var/demo/demo.env`, then `pacs identity`, `pacs search`, ...): owner only.
( umask 077; { echo "export PACS_CONFIG=$PACS_CONFIG DAGSTER_HOME=$DAGSTER_HOME";
  echo "export ORTHANC_USERNAME=$ORTHANC_USERNAME ORTHANC_PASSWORD=$ORTHANC_PASSWORD";
  [[ -n ${FIREBIRD_PASSWORD:-} ]] && echo "export FIREBIRD_PASSWORD=$FIREBIRD_PASSWORD";
  echo "export PATH=$ROOT/.venv/bin:\$PATH"; } > "$DEMO/demo.env" )

echo "Orthanc: http://127.0.0.1:${ORTHANC_HTTP_PORT:-8042} (user $ORTHANC_USERNAME, password in $DEMO/orthanc/orthanc.env)"
echo "Dagster: http://127.0.0.1:${DAGSTER_PORT:-3000}  (Ctrl-C stops everything)"
# Without --default-signal a backgrounded `dagster dev` ignores SIGINT/SIGTERM (measured). It runs in
# its own process group; INT/TERM to this script are forwarded to it, and whatever of its children
# (code server, webserver, daemon) outlives it is stopped with the group.
setsid env --default-signal=INT,TERM dagster dev -w workspace.yaml -h 127.0.0.1 -p "${DAGSTER_PORT:-3000}" &
DAGSTER_PID=$!
stop_dagster() { kill -INT "$DAGSTER_PID" 2>/dev/null || true; }
trap stop_dagster INT TERM
cleanup() {
  stop_dagster
  for _ in $(seq 20); do kill -0 "$DAGSTER_PID" 2>/dev/null || break; sleep 0.5; done
  kill -TERM -- "-$DAGSTER_PID" 2>/dev/null || true
  python -m pacs_assets_tests.services.orthanc stop --dir "$DEMO/orthanc" || true
}
trap cleanup EXIT
wait "$DAGSTER_PID" || true
