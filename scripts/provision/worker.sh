#!/usr/bin/env bash
# Starts a Shoal worker agent that joins the manager published in SHARED_DIR.
# Used by the Vagrant VMs and by the netns demo cluster alike.
#   worker.sh STATE_DIR ADVERTISE_ADDR SHARED_DIR HOSTNAME [extra swarmd worker flags...]
set -euo pipefail
state=$1 addr=$2 shared=$3 name=$4
shift 4
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${SHOAL_VENV:-$repo/.venv}
swarmd=$venv/bin/swarmd
for _ in $(seq 1 600); do
  [ -s "$shared/worker.token" ] && [ -s "$shared/manager.addr" ] && break
  sleep 0.1
done
mkdir -p "$state"
nohup "$swarmd" worker --state-dir "$state" --join-addr "$(cat "$shared/manager.addr")" \
  --join-token "$(cat "$shared/worker.token")" --hostname "$name" --advertise-addr "$addr" \
  "$@" >"$state.log" 2>&1 &
echo $! >"$state.pid"
for _ in $(seq 1 300); do
  if [ -s "$state/node_id" ]; then
    echo "worker $name joined as $(cat "$state/node_id")"
    exit 0
  fi
  if ! kill -0 "$(cat "$state.pid")" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "worker $name did not join; see $state.log" >&2
exit 1
