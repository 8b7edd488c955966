#!/usr/bin/env bash
# A stock Debian root with the firewall tools sg6 drives (iptables, ipset, nftables, ebtables via
# iptables' ebtables-nft), cached under /var/tmp/sg6-tools/<suite> and rebuilt when missing. It is a
# copy of scripts/debian-root.sh's cached root (never changed itself) plus Debian's own packages, so
# `ip netns exec NS chroot ROOT ip6tables-nft-save` runs that release's binaries against a scratch
# namespace (the kernel is shared).
#   scripts/tools-root.sh bookworm|trixie   -> prints the root's path
set -euo pipefail
suite=${1:?usage: tools-root.sh bookworm|trixie}
case "$suite" in bookworm|trixie) ;; *) echo "tools-root.sh: unknown suite '$suite' (bookworm or trixie)" >&2; exit 1;; esac
cache=${SG6_TOOLS_CACHE:-/var/tmp/sg6-tools}
root="$cache/$suite"
if [ ! -f "$root/.sg6-tools-complete" ]; then
  base=$("$(dirname "$0")/debian-root.sh" "$suite")
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.$suite.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cp -a "$base/." "$tmp/"
  rm -f "$tmp/.sg6-complete"
  DEBIAN_FRONTEND=noninteractive chroot "$tmp" apt-get install -y -qq --no-install-recommends iptables ipset nftables >"$tmp.log" 2>&1 \
    || { tail -20 "$tmp.log" >&2; rm -f "$tmp.log"; exit 1; }
  rm -f "$tmp.log"
  chroot "$tmp" apt-get clean
  touch "$tmp/.sg6-tools-complete"
  rm -rf "$root"; mv "$tmp" "$root"; trap - EXIT
fi
echo "$root"
