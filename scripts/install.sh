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
install -m 0644 systemd/sg6.service "$UNIT_DIR/sg6.service"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed sg6 to $LIB; edit $ETC/agent.toml, then: systemctl enable --now sg6"
