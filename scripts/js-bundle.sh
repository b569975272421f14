#!/usr/bin/env bash
# Build tests/js/dist/agents-realtime.js: the OpenAI Agents SDK (realtime),
# @openai/agents-realtime from tests/js/package-lock.json, bundled by esbuild
# as one IIFE script that sets window.AgentsRealtime (see tests/js/agents-entry.js)
# for the headless Chromium tests.
#
# Idempotent and quick when there is nothing to do:
#   - `npm ci` runs only when tests/js/node_modules is missing or older than
#     package.json / package-lock.json;
#   - esbuild runs only when the bundle is missing or older than the entry,
#     the lock file, the installed modules or this script.
# Prints one line when it does something, nothing otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JS="$ROOT/tests/js"
ENTRY="$JS/agents-entry.js"
LOCK="$JS/package-lock.json"
# npm writes node_modules/.package-lock.json last, once the install is complete.
INSTALLED="$JS/node_modules/.package-lock.json"
OUT="$JS/dist/agents-realtime.js"
ESBUILD="$JS/node_modules/.bin/esbuild"

die() { echo "js-bundle: $*" >&2; exit 1; }

# -nt is true when the left file is newer, or exists while the right one does not.
needs_install=0
if [ ! -f "$INSTALLED" ] || [ ! -x "$ESBUILD" ] \
   || [ "$LOCK" -nt "$INSTALLED" ] || [ "$JS/package.json" -nt "$INSTALLED" ]; then
  needs_install=1
fi
needs_build=$needs_install
if [ "$needs_build" -eq 0 ]; then
  for dep in "$ENTRY" "$LOCK" "$INSTALLED" "${BASH_SOURCE[0]}"; do
    if [ ! -f "$OUT" ] || [ "$dep" -nt "$OUT" ]; then needs_build=1; break; fi
  done
fi
[ "$needs_build" -eq 0 ] && exit 0

for cmd in node npm; do
  command -v "$cmd" >/dev/null 2>&1 \
    || die "'$cmd' not found: install Node.js and npm (Debian: apt-get install nodejs npm, or make debian-test-deps)"
done
[ -f "$LOCK" ] || die "missing $LOCK"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
log=$(mktemp)
trap 'rm -f "$log" "$OUT.tmp.$$"' EXIT

steps=""
if [ "$needs_install" -eq 1 ]; then
  t0=$(now)
  # --loglevel=error: keeps npm's EBADENGINE/install-script warnings off the terminal.
  if ! (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1; then
    cat "$log" >&2
    die "npm ci failed in tests/js (the npm registry must be reachable)"
  fi
  [ -f "$INSTALLED" ] && touch "$INSTALLED"
  [ -x "$ESBUILD" ] || die "npm ci did not install esbuild ($ESBUILD)"
  steps="npm ci $(elapsed "$t0"), "
fi

t0=$(now)
mkdir -p "$(dirname "$OUT")"
# Write to a temporary file and rename, so a reader never sees half a bundle.
if ! (cd "$JS" && "$ESBUILD" agents-entry.js --bundle --format=iife --platform=browser \
        --log-level=warning --outfile="$OUT.tmp.$$") >"$log" 2>&1; then
  cat "$log" >&2
  die "esbuild failed"
fi
mv -f "$OUT.tmp.$$" "$OUT"
[ -s "$log" ] && cat "$log" >&2   # esbuild warnings, if any
version=$(node -p 'require(process.argv[1]).version' \
  "$JS/node_modules/@openai/agents-realtime/package.json" 2>/dev/null || echo '?')
size=$(( $(wc -c <"$OUT") / 1024 ))
echo "js-bundle: ${steps}esbuild $(elapsed "$t0"): tests/js/dist/agents-realtime.js" \
     "(@openai/agents-realtime $version, ${size} KiB)"
