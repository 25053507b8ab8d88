#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing. Runs `apt-get update`
# once, and only when something must be installed. Needs root (or sudo).
#
# The Rust toolchain (rustup stable + cargo-nextest) is expected on the machine already:
# never install Debian's rustc/cargo.
set -euo pipefail

packages=(
  swtpm                 # the software TPM every device and test gets its own of
  swtpm-tools           # swtpm_ioctl: handy for debugging the control channel
  libtss2-dev           # tss-esapi builds against tpm2-tss (ESYS, MU, TCTI loader)
  libtss2-tcti-swtpm0   # the swtpm TCTI, loaded at run time (ldd does not show it)
  tpm2-tools            # tpm2_eventlog: cross-checks our TCG event logs
  pkg-config            # tss-esapi-sys finds tpm2-tss with it
  cryptsetup-bin        # cryptsetup (BITLK): an independent reader judges our BitLocker images
  dislocker             # dislocker-file: a second independent BitLocker reader (decrypts images)
  xz-utils              # xz: the Windows-made BitLocker test images are stored xz-compressed
  ca-certificates
  chromium              # harness run --browser: the self-service user in headless Chromium
  chromium-driver       # chromedriver, the WebDriver server the harness drives Chromium through
  fonts-ipafont-gothic  # a Japanese font, so the Japanese pages render (and screenshot) as text
  postgresql            # the portal's second engine: make test runs its suite on a private cluster
  python3-venv          # venvs for the pinned schemathesis and virt-firmware (virt-fw-vars)
  openssl               # openssl s_client: the portal's test that TLS 1.0/1.1 are refused
  # crates/firmware-boot: real OVMF + Secure Boot boots under QEMU, from a disk it builds
  qemu-system-x86       # QEMU (TCG: no KVM needed)
  ovmf                  # UEFI firmware with Secure Boot and the Microsoft keys enrolled
  mtools                # mcopy/mmd: files onto the FAT ESP without mounting it
  dosfstools            # mkfs.vfat: the ESP
  fdisk                 # sfdisk: the GPT with fixed GUIDs
  ipxe-qemu             # efi-e1000.rom: the option ROM of the option-ROM change
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exec "$(dirname "$0")/install-firmware-venv.sh"
fi

if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "error: missing Debian packages (${missing[*]}) and not root: run as root or install them" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
"$(dirname "$0")/install-firmware-venv.sh"
