#!/usr/bin/env bash
# Installs what ferry needs to build and run on Debian 12 (as root): a C++
# toolchain for the addon and Node.js (20 or later), then the npm
# dependencies (the addon is built by `npm ci`, offline, with npm's node-gyp).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
for tool in g++ make python3; do command -v "$tool" >/dev/null || need+=("$tool")
done
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ "${#need[@]}" -gt 0 ]; then
  pkgs=()
  for t in "${need[@]}"; do case "$t" in g++) pkgs+=(g++) ;; *) pkgs+=("$t") ;; esac; done
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "install: ferry needs Node.js 20 or later; this machine has $(node --version)" >&2
  exit 1
fi
npm ci --no-audit --no-fund
