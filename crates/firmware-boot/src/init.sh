#!/bin/busybox sh
# /init of the firmware-boot initramfs: print the firmware's TCG event log and the sha256
# PCRs on ttyS0 between markers, then power off. The host normally takes the TPM state and
# stops QEMU as soon as it reads the PCRS-END marker; the pause before poweroff leaves it the
# time to do so before QEMU's exit shuts the TPM down.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
# Keep kernel messages out of the base64 (they would interleave on the console).
echo 1 > /proc/sys/kernel/printk
exec >/dev/ttyS0 2>&1 </dev/null

echo "===FWBOOT-INFO-BEGIN==="
echo "kernel=$(uname -r)"
echo "cmdline=$(cat /proc/cmdline)"
# efivarfs is a module in Debian's kernel: read the kernel's own verdict instead.
echo "secureboot=$(dmesg | grep -o -i -E 'secure ?boot (enabled|disabled)' | head -1)"
echo "uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "===FWBOOT-INFO-END==="
echo "===FWBOOT-EVENTLOG-BEGIN==="
base64 /sys/kernel/security/tpm0/binary_bios_measurements
echo "===FWBOOT-EVENTLOG-END==="
echo "===FWBOOT-PCRS-BEGIN==="
i=0
while [ $i -le 23 ]; do
  echo "sha256 $i $(cat /sys/class/tpm/tpm0/pcr-sha256/$i)"
  i=$((i+1))
done
echo "===FWBOOT-PCRS-END==="
sync
sleep 20
poweroff -f
