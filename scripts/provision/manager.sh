#!/usr/bin/env bash
# Installs and starts the Shoal manager as a systemd service (shoal-manager.service,
# enabled: it comes back after a reboot) and publishes how to join it.
# Used by the Vagrant VMs.
#   manager.sh STATE_DIR ADVERTISE_ADDR SHARED_DIR
# Writes SHARED_DIR/manager.addr and SHARED_DIR/worker.token.
set -euo pipefail
state=$1 addr=$2 shared=$3
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${SHOAL_VENV:-/opt/shoal/venv}
swarmctl=$venv/bin/swarmctl
mkdir -p "$shared"
install -d -m 0755 /etc/shoal
cat >/etc/shoal/manager.env <<ENV
SHOAL_STATE_DIR=$state
SHOAL_LISTEN_ADDR=$addr:4242
SHOAL_ADVERTISE_ADDR=$addr
ENV
# The unit runs /opt/shoal/venv/bin/swarmd; point it at this venv if it lives elsewhere.
sed "s#/opt/shoal/venv/#$venv/#" "$repo/shoal/systemd/shoal-manager.service" \
  >/etc/systemd/system/shoal-manager.service
systemctl daemon-reload
systemctl enable --now shoal-manager.service
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
echo "manager did not come up:" >&2
journalctl -u shoal-manager.service -n 30 --no-pager >&2 || true
exit 1
