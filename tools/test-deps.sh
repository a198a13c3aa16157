#!/bin/sh
# test-deps.sh installs the servers Bowline's tests run for real, when they
# are missing: Debian's redis-server (the rate limit tests start and stop
# their own) and chromium (the dashboard tests drive it headless). The Consul
# agent is built separately (tools/consul/build.sh). `make test` runs this
# first, so it works on a fresh Debian machine; elsewhere, install the two
# packages by hand.
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
	missing="$missing chromium fonts-dejavu-core"
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "test-deps: missing:$missing" >&2
	echo "test-deps: not root or no apt-get: install them by hand (the Redis tests fail and the dashboard tests skip without them)" >&2
	exit 0
fi

echo "test-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is wanted
apt-get install -y -q --no-install-recommends $missing
