#!/usr/bin/env bash
# Installs the built sg6 program, its systemd unit and an example config. Idempotent: run it again
# after an upgrade; an existing /etc/sg6/agent.toml is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local/lib/sg6}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
[ -f dist/cli.js ] || { echo "install: build first (npm ci && npm run build)" >&2; exit 1; }
install -d -m 0755 "$PREFIX" /etc/sg6
# program: dist/ plus production dependencies
rm -rf "$PREFIX/dist.new"
cp -a dist "$PREFIX/dist.new"
rm -rf "$PREFIX/dist" && mv "$PREFIX/dist.new" "$PREFIX/dist"
install -m 0644 package.json package-lock.json README.md "$PREFIX/"
(cd "$PREFIX" && npm ci --omit=dev --no-audit --no-fund --silent)
ln -sf "$PREFIX/dist/cli.js" /usr/local/bin/sg6
chmod 0755 "$PREFIX/dist/cli.js"
# config: example always refreshed, the real one only created
install -m 0644 docs/agent.toml.example /etc/sg6/agent.toml.example
[ -f /etc/sg6/agent.toml ] || install -m 0640 docs/agent.toml.example /etc/sg6/agent.toml
install -m 0644 systemd/sg6.service "$UNIT_DIR/sg6.service"
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed sg6 to $PREFIX; edit /etc/sg6/agent.toml, then: systemctl enable --now sg6"
