#!/usr/bin/env bash
# nats-server 2.10.x, Debian 13 (trixie)'s package, for the second run of the NATS suite and the fleet
# bench. One static Go binary: downloaded with a private apt state (the host's apt configuration is not
# touched), unpacked with dpkg-deb, cached under /var/tmp/sg6-nats/<version>/ and rebuilt when missing.
#   scripts/nats-server-2.10.sh   -> prints the binary's path
set -euo pipefail
cache=${SG6_NATS_CACHE:-/var/tmp/sg6-nats}
mirror=${SG6_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# a complete cached copy: no network needed
for done in "$cache"/2.10.*/.sg6-complete; do
  [ -f "$done" ] && { echo "${done%/.sg6-complete}/nats-server"; exit 0; }
done
[ -r "$keyring" ] || { echo "nats-server-2.10.sh: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.apt.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/state/lists/partial" "$tmp/cache/archives/partial" "$tmp/pkg"
# trixie's Release is signed by keys bookworm's debian-archive-keyring already carries: checked, not skipped
echo "deb [signed-by=$keyring] $mirror trixie main" >"$tmp/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
  -o "Dir::State=$tmp/state" -o "Dir::State::status=$tmp/state/status" -o "Dir::Cache=$tmp/cache"
  -o APT::Sandbox::User=root -o Debug::NoLocking=1)
: >"$tmp/state/status"
apt-get "${apt_opts[@]}" update -qq >"$tmp/update.log" 2>&1 || { cat "$tmp/update.log" >&2; echo "nats-server-2.10.sh: apt-get update of trixie failed (signature or network)" >&2; exit 1; }
# apt-get update only warns on some signature problems: refuse unless the lists were verified
if grep -Eqi 'NO_PUBKEY|not signed|EXPKEYSIG|BADSIG|is not signed' "$tmp/update.log"; then
  cat "$tmp/update.log" >&2; echo "nats-server-2.10.sh: trixie's Release did not verify with $keyring" >&2; exit 1
fi
version=$(apt-cache "${apt_opts[@]}" show --no-all-versions nats-server | awk '/^Version:/ {print $2; exit}')
case "$version" in 2.10.*) ;; *) echo "nats-server-2.10.sh: trixie's nats-server is '$version', not 2.10.x" >&2; exit 1;; esac
(cd "$tmp/pkg" && apt-get "${apt_opts[@]}" download -qq nats-server >/dev/null)
deb=$(ls "$tmp/pkg"/nats-server_*.deb)
dpkg-deb -x "$deb" "$tmp/root"
dir="$cache/${version//[^A-Za-z0-9.+~-]/_}"
rm -rf "$dir"; mkdir -p "$dir"
cp "$tmp/root/usr/sbin/nats-server" "$dir/nats-server" 2>/dev/null || cp "$(find "$tmp/root" -type f -name nats-server | head -1)" "$dir/nats-server"
chmod 755 "$dir/nats-server"
"$dir/nats-server" --version >"$dir/VERSION"
cp "$deb" "$dir/"
touch "$dir/.sg6-complete"
echo "$dir/nats-server"
