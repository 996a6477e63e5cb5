#!/usr/bin/env bash
# Installs what the test suite needs on a Debian 12 machine (run as root) and
# builds the e2e guest image (kernel + initramfs) into the cache directory.
#
# Idempotent and fast when everything is present: `apt-get update` runs only
# when a package or the guest kernel package is missing.
#
# Environment:
#   FERRY_GUEST_CACHE  where the guest kernel package and the built guest go
#                      (default: <repo>/.cache/guest, git-ignored)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${FERRY_GUEST_CACHE:-$REPO/.cache/guest}"
export DEBIAN_FRONTEND=noninteractive

# The packages the tests use: QEMU for the real guest, busybox-static and
# iperf3 to build it, iproute2 for namespaces, tcpdump for captures, curl and
# procps for probes; gcc and libc6-dev build the guest's static DHCPv6 client;
# systemd (systemd-analyze, systemd-socket-activate) and strace for the unit tests;
# libvirt's daemon, QEMU driver and virsh for the libvirt e2e test (no default network);
# ISC dhclient (-4 and -6), the DHCP client passt's own pasta tests use, for the pasta drop-in test.
PACKAGES=(qemu-system-x86 busybox-static iperf3 iproute2 tcpdump curl procps gcc libc6-dev systemd strace
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients isc-dhcp-client)
# g++ and patchelf make the Jazzer.js prebuild load here (scripts/jazzer-compat.sh);
# libasan8 and libubsan1 are gcc's sanitizer runtimes for the addon's ASan+UBSan run.
PACKAGES+=(g++ patchelf libasan8 libubsan1)
# The guest kernel: this meta package depends on the versioned image package.
KERNEL_META=linux-image-cloud-amd64

fail() {
  echo "install-test-deps: FAILED: $*" >&2
  exit 1
}

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >/dev/null || fail "apt-get update did not succeed"
    apt_updated=1
  fi
}

is_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    fail "missing packages (${missing[*]}); run this script as root"
  fi
  echo "install-test-deps: installing ${missing[*]}"
  apt_update_once
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} did not succeed"
fi

# libvirt 9.0's QEMU driver refuses to start without a libvirt-qemu user and
# group (libvirt-daemon-system would create them; the test does not need it).
if ! getent group libvirt-qemu >/dev/null; then
  groupadd --system libvirt-qemu || fail "groupadd libvirt-qemu did not succeed"
fi
if ! getent passwd libvirt-qemu >/dev/null; then
  useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu || fail "useradd libvirt-qemu did not succeed"
fi

# The guest kernel package: fetched once into the cache, never installed.
mkdir -p "$CACHE"
have_kernel_deb() {
  compgen -G "$CACHE/linux-image-*-cloud-amd64_*.deb" >/dev/null
}
versioned_kernel_package() {
  apt-cache depends "$KERNEL_META" 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
if ! have_kernel_deb; then
  pkg="$(versioned_kernel_package || true)"
  if [ -z "$pkg" ]; then
    apt_update_once
    pkg="$(versioned_kernel_package || true)"
  fi
  [ -n "$pkg" ] || fail "cannot resolve the package behind $KERNEL_META"
  echo "install-test-deps: downloading guest kernel $pkg"
  # apt-get download writes into the current directory; the _apt sandbox user
  # may not be able to write there, which only costs a warning.
  tmp="$(mktemp -d "$CACHE/.download.XXXXXX")"
  if ! (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
    # Stale package lists name a version the archive no longer has.
    apt_update_once
    pkg="$(versioned_kernel_package || true)"
    [ -n "$pkg" ] || { rm -rf "$tmp"; fail "cannot resolve the package behind $KERNEL_META"; }
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) \
      || { rm -rf "$tmp"; fail "apt-get download $pkg did not succeed"; }
  fi
  mv "$tmp"/*.deb "$CACHE"/ && rm -rf "$tmp"
  have_kernel_deb || fail "no kernel package in $CACHE after download"
fi

# build-guest.sh prints its own one-line reason on failure.
exec "$REPO/scripts/build-guest.sh"
