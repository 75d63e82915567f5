#!/usr/bin/env bash
# Installs the Debian packages the NAT lab (netns-sim) and the tests need. Run as root.
# redis-server: the scale-out tests start their own (on a unix socket); Debian's service is
# not needed and, where policy-rc.d allows it, may start on 6379 without harm.
# chrony is unpacked under /opt/p2p-lab/chrony instead of installed: installing Debian's chrony
# package would replace systemd-timesyncd and could touch the host clock. The lab only ever
# runs it as `chronyd -x` (never sets the clock).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (sudo $0)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iproute2 iptables nftables conntrack miniupnpd miniupnpc natpmpc procps redis-server >/dev/null
chrony_root=/opt/p2p-lab/chrony
if [ ! -x "$chrony_root/usr/sbin/chronyd" ]; then
  mkdir -p "$chrony_root"
  tmp=$(mktemp -d)
  chown _apt "$tmp" 2>/dev/null || true # apt-get download writes as the _apt user
  (cd "$tmp" && apt-get download -qq chrony >/dev/null && dpkg -x chrony_*.deb "$chrony_root")
  rm -rf "$tmp"
fi
echo "install-deps.sh: ok (chronyd at $chrony_root/usr/sbin/chronyd)"
