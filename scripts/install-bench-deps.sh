#!/bin/sh
# Debian packages the benchmark (npm run bench) needs beyond the tests'
# (scripts/install-test-deps.sh): slirp4netns for the namespace section and
# DPDK's testpmd (in dpdk-dev) with its virtio-user and ring mempool drivers for the
# testpmd section. passt and pasta are not installed here: the bench takes
# the newest release's binaries from FERRY_BENCH_PASST / FERRY_BENCH_PASTA
# or PATH (Debian 12's passt predates vhost-user).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends slirp4netns dpdk dpdk-dev librte-net-virtio23 librte-mempool-ring23
