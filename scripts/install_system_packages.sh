#!/usr/bin/env bash
# Install the Debian packages the demo and the test harness run for real (Debian bookworm).
# Idempotent: when every package is already installed it exits at once, without `apt-get update`.
set -euo pipefail

PACKAGES=(
  orthanc orthanc-gdcm dcmtk                  # the PACS, its JPEG 2000 renderer, storescu
  firebird3.0-server libfbclient2             # vendor catalogs (server + client library for fdb)
  libopenjp2-7                                # glymur writes JPEG 2000 with it
  postgresql                                  # optional Dagster instance storage; Orthanc index for several nodes
  orthanc-postgresql                          # the PostgreSQL index plugin (several Orthanc nodes, one index)
  dicom3tools                                 # dciodvfy: the tests check the JPEG 2000 wraps against PS3.3
  python3-venv
  fuse3                                       # tests: a slow, flaky pass-through file system (mfusepy)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_system_packages: all ${#PACKAGES[@]} packages already installed."
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install_system_packages: run as root (sudo not found)." >&2; exit 1; }
  SUDO=(sudo)
fi

echo "install_system_packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
# Package scripts (firebird3.0-server, postgresql, orthanc) may try to start their services; without
# an init system that is refused, which is fine: the harness starts private instances itself
# (pacs_assets_tests/services).
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
echo "install_system_packages: done."
