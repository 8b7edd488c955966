#!/usr/bin/env bash
# A stock Debian root (bookworm = 12, trixie = 13) made with debootstrap from Debian's repository,
# cached under /var/tmp/sg6-roots/<suite> and rebuilt when missing. Tests boot copies of it
# (overlays) under systemd-nspawn; the cached root itself is never booted or changed.
#   scripts/debian-root.sh bookworm|trixie   -> prints the root's path
set -euo pipefail
suite=${1:?usage: debian-root.sh bookworm|trixie}
case "$suite" in bookworm|trixie) ;; *) echo "debian-root.sh: unknown suite '$suite' (bookworm or trixie)" >&2; exit 1;; esac
cache=${SG6_ROOT_CACHE:-/var/tmp/sg6-roots}
root="$cache/$suite"
mirror=${SG6_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ ! -f "$root/.sg6-complete" ]; then
  command -v debootstrap >/dev/null || { echo "debian-root.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.$suite.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2,kmod,procps,ca-certificates \
    "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; rm -f "$tmp.log"; exit 1; }
  rm -f "$tmp.log"
  # apt's lists, so a copy can `apt-get install ./sg6_*.deb` from the suite's own repository
  echo "deb $mirror $suite main" >"$tmp/etc/apt/sources.list"
  chroot "$tmp" apt-get update -qq >/dev/null
  echo "$suite" >"$tmp/etc/hostname"
  touch "$tmp/.sg6-complete"
  rm -rf "$root"; mv "$tmp" "$root"; trap - EXIT
fi
echo "$root"
