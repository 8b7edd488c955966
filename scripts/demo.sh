#!/usr/bin/env bash
# The README's first command, on a fresh Debian 12 machine as root:
#   sudo bash scripts/demo.sh           installs what is missing, builds, runs the demo, removes everything
#   sudo bash scripts/demo.sh --keep    leaves it running and prints the commands to look around
#   sudo bash scripts/demo.sh --clean   removes what a --keep (or a killed) run left: sg6demo-* namespaces,
#                                       the processes in them, /tmp/sg6demo-* dirs
# Everything runs in network namespaces named sg6demo-*; the host's interfaces and firewall are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root (sudo bash scripts/demo.sh): it makes network namespaces" >&2; exit 1; }

clean() {
  local ns pid n=0
  for ns in $(ip netns list | awk '{print $1}' | grep '^sg6demo-' || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" && n=$((n + 1))
  done
  rm -rf /tmp/sg6demo-*
  echo "demo: removed $n namespace(s) and their processes, and /tmp/sg6demo-*"
}

case "${1:-}" in
  --clean) clean; exit 0 ;;
  -h|--help) sed -n "2,7p" "$0" | sed "s/^# \{0,1\}//"; exit 0 ;;
esac

bash scripts/setup.sh
# sg6 filters bridged IPv6 with ip6tables: that needs the bridge netfilter module (sysctls are per namespace)
[ -d /proc/sys/net/bridge ] || modprobe br_netfilter
exec node --import tsx demo/run.ts "$@"
