#!/usr/bin/env bash
# Probe (stretch of issue 23, not part of the crate's API): does Debian's SeaBIOS measure
# into a TPM 2.0? Builds a 64 MiB MBR disk with Debian's grub-pc (boot.img at LBA 0,
# core.img at LBA 1, a FAT partition with grub.cfg, the kernel and the firmware-boot
# initramfs taken from the cached UEFI boot disk), boots it under SeaBIOS (QEMU's default
# firmware) with a sha256-only swtpm on TIS, and prints the log the kernel got.
# Usage: seabios-probe.sh WORKDIR     (needs one cached disk: run a firmware-boot boot first)
set -euo pipefail
W=$1; mkdir -p "$W/debs" "$W/run" "$W/tpm"; cd "$W"
CACHE=${FIRMWARE_BOOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/firmware-boot}
export MTOOLS_SKIP_CHECK=1
UEFI_DISK=$(ls "$CACHE"/disks/*.img | head -1)
ROOT=$(ls -d "$CACHE"/packages/*/root | head -1)
[ -d root ] || { (cd debs && apt-get download grub-pc-bin grub-common); for d in debs/*.deb; do dpkg-deb -x "$d" root; done; }
mcopy -o -i "$UEFI_DISK@@1M" ::/initrd.img initrd.img
cp "$ROOT"/boot/vmlinuz-* vmlinuz
G=root/usr/lib/grub/i386-pc
root/usr/bin/grub-mkimage -d $G -O i386-pc -p '(hd0,msdos1)/boot/grub' -o core.img \
  biosdisk part_msdos fat normal linux configfile echo
printf 'set timeout=0\nlinux /vmlinuz console=ttyS0,115200 quiet loglevel=3 panic=-1\ninitrd /initrd.img\nboot\n' > grub.cfg
# What grub-bios-setup would do: point boot.img at core.img (LBA 1) and core.img's first
# sector (diskboot) at the rest of itself (LBA 2..).
python3 - <<'PY'
import struct
core = bytearray(open('core.img', 'rb').read()); n = (len(core) + 511) // 512
core += b'\0' * (n * 512 - len(core))
struct.pack_into('<QHH', core, 0x200 - 12, 2, n - 1, 0x820)
boot = bytearray(open('root/usr/lib/grub/i386-pc/boot.img', 'rb').read())
struct.pack_into('<Q', boot, 0x5c, 1); boot[0x64] = 0xff
img = bytearray(64 << 20); img[0:440] = boot[0:440]; img[512:512 + len(core)] = core
open('mbr.img', 'wb').write(img)
PY
printf 'label: dos\nlabel-id: 0x1234abcd\nstart=2048, type=c, bootable\n' | sfdisk -q mbr.img
mkfs.vfat --invariant -F 32 -i 1234ABCD --offset 2048 mbr.img 63488 >/dev/null
mmd -i mbr.img@@1M ::/boot ::/boot/grub
mcopy -i mbr.img@@1M grub.cfg ::/boot/grub/
mcopy -i mbr.img@@1M vmlinuz initrd.img ::/
rm -rf tpm run; mkdir -p tpm run
swtpm_setup --tpm2 --tpmstate tpm --pcr-banks sha256 --overwrite >/dev/null
swtpm socket --tpm2 --tpmstate dir=tpm --ctrl type=unixio,path=run/sock --terminate --log file=run/swtpm.log &
SWTPM=$!; trap 'kill $SWTPM 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S run/sock ] && break; sleep 0.1; done
timeout -k 5 300 qemu-system-x86_64 -accel tcg -machine q35 -m 512 -smp 1 -display none \
  -monitor none -no-reboot -nic none -serial file:run/serial.log \
  -chardev socket,id=chrtpm,path=run/sock -tpmdev emulator,id=tpm0,chardev=chrtpm \
  -device tpm-tis,tpmdev=tpm0 \
  -drive if=none,id=disk0,format=raw,readonly=on,file=mbr.img -device virtio-blk-pci,drive=disk0
python3 - <<'PY'
import base64, re
t = open('run/serial.log', 'rb').read().decode('latin-1').replace('\r', '')
ev = re.search(r'===FWBOOT-EVENTLOG-BEGIN===\n(.*?)===FWBOOT-EVENTLOG-END===', t, re.S).group(1)
open('run/eventlog.bin', 'wb').write(base64.b64decode(''.join(ev.split())))
print(re.search(r'===FWBOOT-PCRS-BEGIN===\n(.*?)===FWBOOT-PCRS-END===', t, re.S).group(1))
PY
echo "log: $W/run/eventlog.bin (harness eventlog show / replay)"
