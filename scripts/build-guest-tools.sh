#!/usr/bin/env bash
# Builds small static helpers that e2e tests carry into the guest (the
# guest's busybox lacks them), into $CACHE/tools/:
#   udp-tool   test/e2e/udp-tool.c (UDP echo client, server, ECONNREFUSED probe)
# Rebuilds only when the source is newer than the binary.
#
# Environment:
#   FERRY_GUEST_CACHE  cache directory (default: <repo>/.cache/guest)
#   CC                 C compiler (default: gcc or cc)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${FERRY_GUEST_CACHE:-$REPO/.cache/guest}"
OUT="$CACHE/tools"
CC="${CC:-$(command -v gcc || command -v cc || true)}"
[ -n "$CC" ] || { echo "build-guest-tools: FAILED: no C compiler (install gcc and libc6-dev)" >&2; exit 1; }

mkdir -p "$OUT"
SRC="$REPO/test/e2e/udp-tool.c"
BIN="$OUT/udp-tool"
if [ ! -x "$BIN" ] || [ "$SRC" -nt "$BIN" ]; then
  "$CC" -static -O2 -Wall -Wextra -o "$BIN.tmp" "$SRC"
  strip "$BIN.tmp" 2>/dev/null || true
  mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
