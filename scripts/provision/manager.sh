#!/usr/bin/env bash
# Starts a Shoal manager (embedded etcd) and publishes how to join it.
# Used by the Vagrant VMs and by the netns demo cluster alike.
#   manager.sh STATE_DIR ADVERTISE_ADDR SHARED_DIR
# Writes SHARED_DIR/manager.addr and SHARED_DIR/worker.token.
set -euo pipefail
state=$1 addr=$2 shared=$3
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${SHOAL_VENV:-$repo/.venv}
swarmd=$venv/bin/swarmd
swarmctl=$venv/bin/swarmctl
mkdir -p "$state" "$shared"
nohup "$swarmd" manager --state-dir "$state" --listen-addr "$addr:4242" \
  --advertise-addr "$addr" >"$state.log" 2>&1 &
echo $! >"$state.pid"
for _ in $(seq 1 300); do
  if "$swarmctl" --socket "$state/control.sock" cluster join-token worker -q \
      >"$shared/worker.token.tmp" 2>/dev/null; then
    mv "$shared/worker.token.tmp" "$shared/worker.token"
    echo "$addr:4242" >"$shared/manager.addr"
    echo "manager up on $addr:4242"
    exit 0
  fi
  sleep 0.1
done
echo "manager did not come up; see $state.log" >&2
exit 1
