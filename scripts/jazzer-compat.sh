#!/usr/bin/env bash
# Makes Jazzer.js's native fuzzer load on Debian 12.
#
# @jazzer.js/fuzzer 4.0.0 ships one Linux x64 prebuild, linked against glibc
# 2.38 and GCC 13's libstdc++; Debian 12 has glibc 2.36 and GCC 12. The
# prebuild uses exactly three symbols those lack: the C23 strtol/strtoul
# (which differ from the old ones only in accepting "0b" prefixes) and GCC
# 13's iostream initialiser. Older Jazzer.js releases fetch their binary from
# outside the npm registry, which this machine cannot reach. So: build a tiny
# library providing the three symbols, let the prebuild take them from it,
# and mark the two version requirements weak so the loader does not refuse it.
#
# Idempotent: does nothing when the prebuild already loads (a newer distro, or
# already patched). Needs g++, patchelf and node.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PREBUILDS="$REPO/node_modules/@jazzer.js/fuzzer/prebuilds"
ADDON="$PREBUILDS/fuzzer-linux-x64.node"
SHIM="$PREBUILDS/libferry-jazzer-compat.so"

fail() {
  echo "jazzer-compat: FAILED: $*" >&2
  exit 1
}

loads() {
  node -e "require(process.argv[1])" "$ADDON" >/dev/null 2>&1
}

[ -f "$ADDON" ] || fail "no $ADDON (run npm ci)"
loads && exit 0
command -v patchelf >/dev/null || fail "patchelf is missing (scripts/install-test-deps.sh installs it)"
command -v g++ >/dev/null || fail "g++ is missing"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/shim.cc" <<'CC'
#include <cstdlib>
#include <ios>
extern "C" long __isoc23_strtol(const char *s, char **end, int base) { return std::strtol(s, end, base); }
extern "C" unsigned long __isoc23_strtoul(const char *s, char **end, int base) { return std::strtoul(s, end, base); }
namespace std {
void ios_base_library_init() { static ios_base::Init init; }
}
CC
g++ -O2 -shared -fPIC -o "$SHIM" "$tmp/shim.cc" || fail "cannot build the compat library"

[ -f "$ADDON.orig" ] || cp "$ADDON" "$ADDON.orig"
cp "$ADDON.orig" "$tmp/addon.node"
patchelf --clear-symbol-version __isoc23_strtol --clear-symbol-version __isoc23_strtoul \
  --clear-symbol-version _ZSt21ios_base_library_initv --add-needed "$SHIM" "$tmp/addon.node" \
  || fail "patchelf did not succeed"
# Set VER_FLG_WEAK on the GLIBC_2.38 and GLIBCXX_3.4.32 needs in .gnu.version_r.
node - "$tmp/addon.node" GLIBC_2.38 GLIBCXX_3.4.32 <<'JS' || fail "cannot weaken the version needs"
const fs = require('fs');
const [file, ...names] = process.argv.slice(2);
const b = fs.readFileSync(file);
const shoff = Number(b.readBigUInt64LE(0x28));
const shentsize = b.readUInt16LE(0x3a);
const shnum = b.readUInt16LE(0x3c);
const section = (i) => {
  const o = shoff + i * shentsize;
  return { type: b.readUInt32LE(o + 4), offset: Number(b.readBigUInt64LE(o + 0x18)), link: b.readUInt32LE(o + 0x28) };
};
let weakened = 0;
for (let i = 0; i < shnum; i++) {
  const s = section(i);
  if (s.type !== 0x6ffffffe) continue; // SHT_GNU_verneed
  const strtab = section(s.link).offset;
  for (let vn = s.offset, guard = 0; guard < 64; guard++) {
    const count = b.readUInt16LE(vn + 2);
    for (let a = vn + b.readUInt32LE(vn + 8), k = 0; k < count; k++) {
      const nameAt = strtab + b.readUInt32LE(a + 8);
      const name = b.toString('latin1', nameAt, b.indexOf(0, nameAt));
      if (names.includes(name)) {
        b.writeUInt16LE(b.readUInt16LE(a + 4) | 2, a + 4); // VER_FLG_WEAK
        weakened++;
      }
      a += b.readUInt32LE(a + 12);
    }
    const next = b.readUInt32LE(vn + 12);
    if (next === 0) break;
    vn += next;
  }
}
if (weakened !== names.length) throw new Error(`weakened ${weakened} of ${names.length} version needs`);
fs.writeFileSync(file, b);
JS
cp "$tmp/addon.node" "$ADDON"
loads || fail "the patched prebuild still does not load"
echo "jazzer-compat: patched $ADDON for this glibc/libstdc++"
