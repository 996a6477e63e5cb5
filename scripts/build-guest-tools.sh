#!/usr/bin/env bash
# Builds small static helpers that e2e tests carry into the guest (the
# guest's busybox lacks them), into $CACHE/tools/:
#   tcp-tool   test/guest/tcp-tool.c (TCP upload/download with sha256, server,
#              many concurrent echoes, half-close, resets, connect probe)
#   udp-tool   test/guest/udp-tool.c (UDP echo client, server, ECONNREFUSED probe)
# Prints one path per tool, udp-tool's last (callers that predate tcp-tool
# take the last line). Rebuilds only when the source is newer than the binary.
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
TCP_SRC="$REPO/test/guest/tcp-tool.c"
TCP_BIN="$OUT/tcp-tool"
if [ ! -x "$TCP_BIN" ] || [ "$TCP_SRC" -nt "$TCP_BIN" ]; then
  "$CC" -static -O2 -Wall -Wextra -o "$TCP_BIN.tmp" "$TCP_SRC"
  strip "$TCP_BIN.tmp" 2>/dev/null || true
  mv "$TCP_BIN.tmp" "$TCP_BIN"
fi
echo "$TCP_BIN"
SRC="$REPO/test/guest/udp-tool.c"
BIN="$OUT/udp-tool"
if [ ! -x "$BIN" ] || [ "$SRC" -nt "$BIN" ]; then
  "$CC" -static -O2 -Wall -Wextra -o "$BIN.tmp" "$SRC"
  strip "$BIN.tmp" 2>/dev/null || true
  mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
