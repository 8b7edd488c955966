#!/usr/bin/env bash
# The README's first command, on a fresh Debian 12 machine as root:
#   sudo bash scripts/demo.sh           installs what is missing, builds, runs the demo, removes everything
#   sudo bash scripts/demo.sh --keep    leaves it running and prints the commands to look around
#   sudo bash scripts/demo.sh --json    the result as one JSON document instead of the table
#   sudo bash scripts/demo.sh --backend nftables   the agent with the nftables dataplane (default iptables)
#   sudo bash scripts/demo.sh --clean   removes what a --keep (or a killed) run left: sg6demo-* namespaces,
#                                       the processes in them, /tmp/sg6demo-* dirs
# Everything runs in network namespaces named sg6demo-*; the host's interfaces and firewall are not touched.
# Exit 0 when every cell of the table is what the design wants.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root (sudo bash scripts/demo.sh): it makes network namespaces" >&2; exit 1; }

clean() {
  local ns pid n=0
  for ns in $(ip netns list | awk '{print $1}' | grep '^sg6demo-' || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" && n=$((n + 1))
  done
  rm -rf /tmp/sg6demo-*
  echo "demo: removed $n namespace(s) with the processes in them, and /tmp/sg6demo-*"
}
if [ "${1:-}" = --clean ]; then clean; exit 0; fi

# sg6 needs Node.js >= 20 (Debian 12's own nodejs package is 18)
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  echo "scripts/demo.sh: sg6 needs Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none))." >&2
  echo "  Debian 12 ships 18; install 20, e.g. from https://deb.nodesource.com (nodejs 20.x), then run this again." >&2
  exit 1
fi

bash scripts/setup.sh
# sg6 filters bridged IPv6 with ip6tables, which needs the bridge netfilter module (its switches are per namespace)
[ -d /proc/sys/net/bridge ] || modprobe br_netfilter
exec node --import tsx demo/run.ts "$@"
