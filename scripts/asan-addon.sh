#!/usr/bin/env bash
# The addon's tests under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds addon/ with -fsanitize=address,undefined into its own tree
# (.cache/asan/, so build/Release stays the normal addon), lays the compiled
# tests beside it, and runs the tests that drive the addon with gcc's
# sanitizer runtimes preloaded into node. Fails on any sanitizer report.
#
# LeakSanitizer is off (detect_leaks=0): Node itself leaves allocations
# behind at exit by design, which would drown any report of ours. ASan's own
# SIGBUS handler is off (handle_sigbus=0): the addon's guest-memory guard
# owns SIGBUS, and its tests check that a SIGBUS it does not absorb still
# kills the process as the default action does.
#
# Needs: a built dist/ (npm run build), gcc/g++, libasan8 and libubsan1.
# Environment: ASAN_TESTS  test files to run, relative to dist/ (default below).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$REPO/.cache/asan"
NODE_GYP=/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js
TESTS=${ASAN_TESTS:-"test/unit/sys/native.test.js test/unit/sys/guard.test.js test/unit/sys/linux.test.js test/unit/virtqueue/guest-memory.test.js"}

fail() {
  echo "asan-addon: FAILED: $*" >&2
  exit 1
}

[ -d "$REPO/dist/test" ] || fail "no dist/ (run npm run build first)"
runtime() {
  local lib
  lib="$(gcc -print-file-name="$1")"
  [ -e "$lib" ] || fail "$1 not found (install libasan8 and libubsan1: scripts/install-test-deps.sh)"
  readlink -f "$lib"
}
ASAN_LIB="$(runtime libasan.so)"
UBSAN_LIB="$(runtime libubsan.so)"

# A tree that looks like the checkout (package.json, scripts/, node_modules,
# dist/) with the sanitized addon at build/Release, where the binding looks.
mkdir -p "$ROOT"
rm -rf "$ROOT/dist" "$ROOT/addon"
cp -r "$REPO/addon" "$ROOT/addon"
cp "$REPO/binding.gyp" "$REPO/package.json" "$ROOT/"
ln -sfn "$REPO/node_modules" "$ROOT/node_modules"
ln -sfn "$REPO/scripts" "$ROOT/scripts"
ln -sfn "$REPO/proto" "$ROOT/proto"
cp -r "$REPO/dist" "$ROOT/dist"

stamp="$ROOT/build/sources.sha256"
sources_hash="$(cat "$REPO/binding.gyp" "$REPO"/addon/* | sha256sum | cut -d' ' -f1)"
if [ ! -f "$ROOT/build/Release/ferry_native.node" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sources_hash" ]; then
  echo "asan-addon: building addon/ with -fsanitize=address,undefined"
  flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
  (cd "$ROOT" && CFLAGS="$flags" CXXFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
    node "$NODE_GYP" rebuild --nodedir=/usr >"$ROOT/build.log" 2>&1) || { tail -30 "$ROOT/build.log" >&2; fail "node-gyp rebuild did not succeed"; }
  echo "$sources_hash" >"$stamp"
fi
symbols="$(nm -D "$ROOT/build/Release/ferry_native.node")"
grep -q __asan_ <<<"$symbols" || fail "the addon was built without ASan"
grep -q __ubsan_ <<<"$symbols" || fail "the addon was built without UBSan"

report="$ROOT/report.log"
rm -f "$report"
specs=()
for t in $TESTS; do specs+=("$ROOT/dist/$t"); done
echo "asan-addon: running ${TESTS} under ASan+UBSan (leak detection off)"
set +e
(cd "$ROOT" && LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB" \
  ASAN_OPTIONS="detect_leaks=0:handle_sigbus=0:halt_on_error=1:abort_on_error=0:exitcode=86" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87" \
  node node_modules/mocha/bin/mocha.js --reporter dot "${specs[@]}") 2>&1 | tee "$report"
status=${PIPESTATUS[0]}
set -e
if grep -qE 'ERROR: AddressSanitizer|runtime error:|ERROR: UndefinedBehaviorSanitizer' "$report"; then
  fail "a sanitizer report (above; saved in $report)"
fi
[ "$status" = 0 ] || fail "the tests failed under the sanitizers (exit $status)"
echo "asan-addon: no sanitizer report"
