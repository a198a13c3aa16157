#!/bin/sh
# build.sh builds the Consul agent that Bowline's tests run (test/consulagent)
# into <repo>/bin/consul, from the version pinned by this tools module. It does
# nothing when bin/consul is already there; delete it to rebuild.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$root/bin/consul"

if [ -x "$bin" ]; then
	exit 0
fi

mkdir -p "$root/bin"
cd "$here"
# Build next to the target and rename, so an interrupted build never leaves a
# partial binary that a later run would take for a finished one.
trap 'rm -f "$bin.tmp.$$"' EXIT
go build -o "$bin.tmp.$$" github.com/hashicorp/consul
mv "$bin.tmp.$$" "$bin"
echo "built $bin"
