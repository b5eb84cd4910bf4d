#!/usr/bin/env bash
# Installs and starts a Shoal worker agent as a systemd service (shoal-worker.service,
# enabled: after a reboot the node rejoins with the identity in its state dir), joining
# the manager published in SHARED_DIR. The join token goes to /etc/shoal/join-token
# (mode 0600), not onto the command line. Used by the Vagrant VMs.
#   worker.sh STATE_DIR ADVERTISE_ADDR SHARED_DIR HOSTNAME [extra swarmd worker flags...]
set -euo pipefail
state=$1 addr=$2 shared=$3 name=$4
shift 4
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${SHOAL_VENV:-/opt/shoal/venv}
for _ in $(seq 1 600); do
  [ -s "$shared/worker.token" ] && [ -s "$shared/manager.addr" ] && break
  sleep 0.1
done
install -d -m 0755 /etc/shoal
install -m 0600 "$shared/worker.token" /etc/shoal/join-token
cat >/etc/shoal/worker.env <<ENV
SHOAL_STATE_DIR=$state
SHOAL_JOIN_ADDR=$(cat "$shared/manager.addr")
SHOAL_ADVERTISE_ADDR=$addr
SHOAL_WORKER_ARGS="--hostname $name $*"
ENV
sed "s#/opt/shoal/venv/#$venv/#" "$repo/shoal/systemd/shoal-worker.service" \
  >/etc/systemd/system/shoal-worker.service
systemctl daemon-reload
systemctl enable --now containerd.service shoal-worker.service
for _ in $(seq 1 300); do
  if [ -s "$state/node_id" ]; then
    echo "worker $name joined as $(cat "$state/node_id")"
    exit 0
  fi
  systemctl is-failed --quiet shoal-worker.service && break
  sleep 0.1
done
echo "worker $name did not join:" >&2
journalctl -u shoal-worker.service -n 30 --no-pager >&2 || true
exit 1
