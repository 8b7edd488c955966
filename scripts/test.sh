#!/usr/bin/env bash
# The whole test suite: unit and property tests, then real kernel, real NATS and end-to-end tests.
# Needs root (network namespaces) on Debian 12 with the packages .ci/run installs.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (tests make network namespaces)" >&2; exit 1; }
npm run --silent build || exit 1

passed=0; failed=0; status=0
for dir in unit kernel nats e2e; do
  [ -d "test/$dir" ] || continue
  ls test/$dir/*.test.ts >/dev/null 2>&1 || continue
  echo "== test/$dir"
  log=$(mktemp)
  npx uvu -r tsx "test/$dir" '\.test\.ts$' 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  p=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '/^  Passed:/ {print $2}' | tail -1)
  t=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '/^  Total:/ {print $2}' | tail -1)
  p=${p:-0}; t=${t:-0}
  passed=$((passed + p)); failed=$((failed + t - p))
  if [ "$rc" != 0 ]; then status=1; [ "$t" = "$p" ] && failed=$((failed + 1)); fi
  rm -f "$log"
done
echo
echo "tests: $passed passed, $failed failed"
exit $status
