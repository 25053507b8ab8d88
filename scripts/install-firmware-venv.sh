#!/usr/bin/env bash
# Installs virt-firmware (its `virt-fw-vars` edits OVMF varstores: db/dbx, Secure Boot off)
# into a private venv for crates/firmware-boot. Idempotent: does nothing when the pinned
# version is there. The venv lives where the crate looks for it:
#   ${FIRMWARE_BOOT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/firmware-boot/venv}
set -euo pipefail

VIRT_FIRMWARE_VERSION=26.10   # pinned: the varstore edits are part of the measured inputs
venv=${FIRMWARE_BOOT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/firmware-boot/venv}

if "$venv/bin/python3" -c "import importlib.metadata as m, sys; sys.exit(m.version('virt-firmware') != '$VIRT_FIRMWARE_VERSION')" 2>/dev/null; then
  exit 0
fi
echo "installing virt-firmware $VIRT_FIRMWARE_VERSION into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "virt-firmware==$VIRT_FIRMWARE_VERSION"
