#!/usr/bin/env bash
# Builds OUTDIR/sg6_<version>_amd64.deb (default OUTDIR: .) with dpkg-deb from the built tree
# (npm ci && npm run build first). amd64 because of the netlink module's native prebuild.
# Layout: /usr/lib/sg6 (dist, production node_modules, package.json), /usr/bin/sg6, the unit and
# the libvirtd/virtqemud drop-ins in /usr/lib/systemd/system, modules-load.d and sysctl.d entries in
# /usr/lib, /etc/sg6/agent.toml as a conffile, maintainer scripts from debian/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-.}
[ -f dist/cli.js ] || { echo "build-deb: build first (npm ci && npm run build)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb is missing (package dpkg)" >&2; exit 1; }
VERSION=$(node -p 'require("./package.json").version')
ARCH=amd64
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/sg6
umask 022

# program: dist/ plus production dependencies
lib=$pkg/usr/lib/sg6
install -d "$lib" "$pkg/usr/bin"
cp -r dist "$lib/dist"
install -m 0644 package.json package-lock.json "$lib/"
# the tree npm ci made for the build, pruned to production dependencies (no download; the same
# versions package-lock.json pins)
cp -r node_modules "$lib/node_modules"
(cd "$lib" && npm prune --omit=dev --no-audit --no-fund --silent)
rm -f "$lib/package-lock.json"
rm -rf "$lib/node_modules/.bin" "$lib/node_modules/.package-lock.json"
# the native module: only this architecture's prebuild (no binaries for other architectures)
find "$lib/node_modules" -path '*/prebuilds/*' -mindepth 1 -maxdepth 3 -type d -name 'linux-*' ! -name linux-x64 -prune -exec rm -rf {} +
# npm's and VCS's dot files, HTML docs that load scripts from the web; no executable bit on
# library files (nothing in node_modules is run directly); the .node library stripped, 0644
find "$lib/node_modules" -type f \( -name '.npmignore' -o -name '.gitattributes' -o -name '.gitignore' -o -name '.travis.yml' -o -name '.eslintrc*' -o -name '*.html' \) -delete
find "$lib/node_modules" -type f -exec chmod 0644 {} +
find "$lib/node_modules" -type f ! -name '*.node' -exec grep -lZ -m1 '^#!' {} + | xargs -0r chmod 0755
if command -v strip >/dev/null; then find "$lib/node_modules" -type f -name '*.node' -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +; fi
chmod 0755 "$lib/dist/cli.js"
ln -s ../lib/sg6/dist/cli.js "$pkg/usr/bin/sg6"

# systemd: the unit, libvirt's drop-ins, module and sysctl at boot
# /usr/lib/systemd/system: on a merged-/usr system (Debian 12 and 13) /lib is a symlink, and dpkg
# would warn on purge that "/lib/systemd/system" is not empty; systemd reads both
unit=$pkg/usr/lib/systemd/system
install -d "$unit/libvirtd.service.d" "$unit/virtqemud.service.d" "$pkg/usr/lib/modules-load.d" "$pkg/usr/lib/sysctl.d"
install -m 0644 systemd/sg6.service "$unit/sg6.service"
install -m 0644 systemd/libvirtd.service.d/sg6.conf "$unit/libvirtd.service.d/sg6.conf"
install -m 0644 systemd/libvirtd.service.d/sg6.conf "$unit/virtqemud.service.d/sg6.conf"
install -m 0644 systemd/modules-load.d/sg6.conf "$pkg/usr/lib/modules-load.d/sg6.conf"
install -m 0644 systemd/sysctl.d/60-sg6.conf "$pkg/usr/lib/sysctl.d/60-sg6.conf"

# config (conffile: dpkg keeps the operator's edits across upgrades)
install -d "$pkg/etc/sg6"
install -m 0640 docs/agent.toml.example "$pkg/etc/sg6/agent.toml"

# docs, copyright, changelog, man page
doc=$pkg/usr/share/doc/sg6
install -d "$doc" "$pkg/usr/share/man/man1"
install -m 0644 README.md docs/contract.md docs/dataplane.md docs/nftables.md docs/nats-authorization.md docs/agent.toml.example "$doc/"
install -m 0644 debian/copyright "$doc/copyright"
DATE=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$DATE/" debian/changelog | gzip -9n >"$doc/changelog.gz"
sed -e "s/@VERSION@/$VERSION/" debian/sg6.1 | gzip -9n >"$pkg/usr/share/man/man1/sg6.1.gz"
chmod 0644 "$doc/changelog.gz" "$pkg/usr/share/man/man1/sg6.1.gz"
# agent.toml is 0640: it may hold NATS credentials (user/password, token)
install -d "$pkg/usr/share/lintian/overrides"
install -m 0644 debian/lintian-overrides "$pkg/usr/share/lintian/overrides/sg6"

# control
install -d "$pkg/DEBIAN"
install -m 0755 debian/postinst debian/prerm debian/postrm "$pkg/DEBIAN/"
echo /etc/sg6/agent.toml >"$pkg/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$SIZE/" debian/control.in >"$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"

# no group/other write anywhere; directories 0755
find "$pkg" -type d -exec chmod 0755 {} +
find "$pkg" -type f -perm /022 -exec chmod go-w {} +

mkdir -p "$OUTDIR"
deb="$OUTDIR/sg6_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zgzip -z9 --build "$pkg" "$deb" >/dev/null
echo "$deb"
