#!/usr/bin/env bash
# Builds the e2e test guest from the cached Debian cloud kernel package:
#   $OUT/vmlinuz            the kernel
#   $OUT/initramfs.cpio.gz  busybox-static + test/guest/init + virtio-net
#                           modules + iperf3, ISC dhclient and their
#                           libraries
#   $OUT/kernel-release     the kernel's release string
# Rebuilds only when an input changed (recorded in $OUT/stamp).
#
# Environment:
#   FERRY_GUEST_CACHE  directory holding linux-image-*-cloud-amd64_*.deb
#                      (default: <repo>/.cache/guest); $OUT is its out/
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${FERRY_GUEST_CACHE:-$REPO/.cache/guest}"
OUT="$CACHE/out"
GUEST_SRC="$REPO/test/guest"

fail() {
  echo "build-guest: FAILED: $*" >&2
  exit 1
}

# Inputs ---------------------------------------------------------------------
KERNEL_DEB="$(ls -1 "$CACHE"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n 1 || true)"
[ -n "$KERNEL_DEB" ] || fail "no linux-image-*-cloud-amd64 .deb in $CACHE (run scripts/install-test-deps.sh)"

BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] || fail "busybox not found (install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  fail "$BUSYBOX is dynamically linked (install busybox-static)"
fi
IPERF3="$(command -v iperf3 || true)"
[ -n "$IPERF3" ] || fail "iperf3 not found (install iperf3)"
DHCLIENT="$(command -v dhclient || true)"
[ -n "$DHCLIENT" ] || fail "dhclient not found (install isc-dhcp-client)"
# busybox has no DHCPv6 client: the guest gets a small static one built here.
CC="${CC:-$(command -v gcc || command -v cc || true)}"
[ -n "$CC" ] || fail "no C compiler to build test/guest/dhcp6-client.c (install gcc and libc6-dev)"

# Shared objects iperf3 and dhclient need, as the paths the dynamic loader will look for.
iperf3_libs() {
  { ldd "$IPERF3"; ldd "$DHCLIENT"; } | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }' | sort -u
}

MODULE_NAMES=()
while read -r line; do
  line="${line%%#*}"
  line="$(echo "$line" | tr -d '[:space:]')"
  [ -n "$line" ] && MODULE_NAMES+=("$line")
done <"$GUEST_SRC/modules"

input_digest() {
  {
    echo "deb $(basename "$KERNEL_DEB") $(stat -c %s "$KERNEL_DEB")"
    sha256sum "$0" "$GUEST_SRC"/init "$GUEST_SRC"/udhcpc.script "$GUEST_SRC"/dhclient.script "$GUEST_SRC"/modules "$GUEST_SRC"/dhcp6-client.c "$BUSYBOX" "$IPERF3" "$DHCLIENT" | awk '{ print $1 }'
    for lib in $(iperf3_libs); do
      echo "$lib $(sha256sum "$lib" | awk '{ print $1 }')"
    done
  } | sha256sum | awk '{ print $1 }'
}
DIGEST="$(input_digest)"

if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$DIGEST" ] \
  && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio.gz" ]; then
  exit 0
fi

echo "build-guest: building guest from $(basename "$KERNEL_DEB")"
WORK="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Kernel and modules ---------------------------------------------------------
dpkg-deb -x "$KERNEL_DEB" "$WORK/deb" || fail "cannot unpack $KERNEL_DEB"
VMLINUZ="$(ls -1 "$WORK"/deb/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)"
[ -n "$VMLINUZ" ] || fail "no /boot/vmlinuz-* in $KERNEL_DEB"
RELEASE="${VMLINUZ##*/vmlinuz-}"
MODDIR="$WORK/deb/lib/modules/$RELEASE"
[ -d "$MODDIR" ] || MODDIR="$WORK/deb/usr/lib/modules/$RELEASE"
[ -d "$MODDIR" ] || fail "no module directory for $RELEASE in $KERNEL_DEB"
KCONFIG="$(ls -1 "$WORK"/deb/boot/config-* 2>/dev/null | head -n 1 || true)"

ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,var/run,lib/modules}

for name in "${MODULE_NAMES[@]}"; do
  ko="$(find "$MODDIR" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" \) | head -n 1)"
  if [ -z "$ko" ]; then
    # Not a module: it must be built in, or the guest cannot drive virtio-net.
    symbol="CONFIG_$(echo "$name" | tr '[:lower:]' '[:upper:]')"
    if [ -n "$KCONFIG" ] && ! grep -q "^${symbol}=y" "$KCONFIG"; then
      echo "build-guest: note: $name.ko absent and $symbol not =y in the kernel config" >&2
    fi
    continue
  fi
  case "$ko" in
    *.ko) cp "$ko" "$ROOT/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$ko" >"$ROOT/lib/modules/$name.ko" || fail "cannot decompress $ko" ;;
    *.ko.zst) zstd -dqc "$ko" >"$ROOT/lib/modules/$name.ko" || fail "cannot decompress $ko (zstd)" ;;
  esac
done
cp "$GUEST_SRC/modules" "$ROOT/etc/ferry-modules"

# Userland -------------------------------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] && continue
  ln -s busybox "$ROOT/bin/$applet"
done
install -m 0755 "$GUEST_SRC/init" "$ROOT/init"
install -m 0755 "$GUEST_SRC/udhcpc.script" "$ROOT/etc/udhcpc.script"

cp "$IPERF3" "$ROOT/usr/bin/iperf3"
cp "$DHCLIENT" "$ROOT/usr/sbin/dhclient"
install -m 0755 "$GUEST_SRC/dhclient.script" "$ROOT/etc/dhclient.script"
mkdir -p "$ROOT/var/lib/dhcp"
"$CC" -static -Os -Wall -o "$ROOT/usr/bin/dhcp6-client" "$GUEST_SRC/dhcp6-client.c" \
  || fail "cannot build a static dhcp6-client (needs gcc and libc6-dev)"
for lib in $(iperf3_libs); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
# With usrmerge the loader may be named through /lib64 or /usr/lib64 links;
# make both spellings resolve inside the guest.
for dir in lib lib64; do
  if [ -d "$ROOT/usr/$dir" ] && [ ! -e "$ROOT/$dir" ]; then
    ln -s "usr/$dir" "$ROOT/$dir"
  fi
done

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
: >"$ROOT/etc/resolv.conf"

# The archive ----------------------------------------------------------------
mkdir -p "$OUT"
(cd "$ROOT" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) \
  | gzip -6 >"$WORK/initramfs.cpio.gz" || fail "cannot build the initramfs archive"
cp "$VMLINUZ" "$WORK/vmlinuz"
mv "$WORK/vmlinuz" "$OUT/vmlinuz"
mv "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
echo "$RELEASE" >"$OUT/kernel-release"
echo "$DIGEST" >"$OUT/stamp"
echo "build-guest: built $OUT (kernel $RELEASE, initramfs $(stat -c %s "$OUT/initramfs.cpio.gz") bytes)"
