#!/usr/bin/env bash
# Installs the built sg6 program, its systemd unit and an example config. Idempotent: run it again
# after an upgrade; an existing agent.toml is never overwritten. DESTDIR stages into another root.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
PREFIX=/usr/local/lib/sg6
LIB="$DESTDIR$PREFIX"
ETC="$DESTDIR/etc/sg6"
BIN="$DESTDIR/usr/local/bin"
UNIT_DIR="$DESTDIR/etc/systemd/system"
[ -f dist/cli.js ] || { echo "install: build first (npm ci && npm run build)" >&2; exit 1; }
install -d -m 0755 "$LIB" "$ETC" "$BIN" "$UNIT_DIR"
# program: dist/ plus production dependencies, swapped in whole
rm -rf "$LIB/dist.new"
cp -a dist "$LIB/dist.new"
rm -rf "$LIB/dist" && mv "$LIB/dist.new" "$LIB/dist"
install -m 0644 package.json package-lock.json README.md "$LIB/"
(cd "$LIB" && npm ci --omit=dev --no-audit --no-fund --silent)
chmod 0755 "$LIB/dist/cli.js"
ln -sfn "$PREFIX/dist/cli.js" "$BIN/sg6"
# config: the example is always refreshed, the real one only created
install -m 0644 docs/agent.toml.example "$ETC/agent.toml.example"
[ -f "$ETC/agent.toml" ] || install -m 0640 docs/agent.toml.example "$ETC/agent.toml"
# the unit names the package's paths (/usr/lib/sg6); this install lives under /usr/local
sed -e "s|/usr/lib/sg6/|$PREFIX/|g" -e "s|/usr/share/doc/sg6/|$PREFIX/|g" systemd/sg6.service >"$UNIT_DIR/sg6.service.new"
chmod 0644 "$UNIT_DIR/sg6.service.new" && mv "$UNIT_DIR/sg6.service.new" "$UNIT_DIR/sg6.service"
# libvirtd waits for sg6 (docs: README "Install the service"); br_netfilter and its sysctl at boot
install -d -m 0755 "$UNIT_DIR/libvirtd.service.d" "$DESTDIR/etc/modules-load.d" "$DESTDIR/etc/sysctl.d"
install -m 0644 systemd/libvirtd.service.d/sg6.conf "$UNIT_DIR/libvirtd.service.d/sg6.conf"
install -m 0644 systemd/modules-load.d/sg6.conf "$DESTDIR/etc/modules-load.d/sg6.conf"
install -m 0644 systemd/sysctl.d/60-sg6.conf "$DESTDIR/etc/sysctl.d/60-sg6.conf"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed sg6 to $LIB; edit $ETC/agent.toml, then: systemctl enable --now sg6"
