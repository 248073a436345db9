#!/usr/bin/env bash
# Make sure the browser the report tests drive is installed: Debian's chromium and its matching
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver). Installs what is missing with
# apt-get, non-interactively. Exits non-zero naming what could not be made available: the report
# tests never skip for a missing browser.
set -uo pipefail

log() { printf 'browser: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

missing=()
[ -x "$CHROMIUM" ] || missing+=(chromium)
[ -x "$DRIVER" ] || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  out=$(mktemp)
  if ! as_root apt-get update -qq >"$out" 2>&1; then
    cat "$out" >&2; rm -f "$out"; log "FAILED: apt-get update (needed to install ${missing[*]})"; exit 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >"$out" 2>&1; then
    cat "$out" >&2; rm -f "$out"; log "FAILED: apt-get install ${missing[*]}"; exit 1
  fi
  rm -f "$out"
fi

status=0
if ! "$CHROMIUM" --version >/dev/null 2>&1; then
  log "FAILED: chromium is not runnable at $CHROMIUM"; status=1
fi
if ! "$DRIVER" --version >/dev/null 2>&1; then
  log "FAILED: chromium-driver is not runnable at $DRIVER"; status=1
fi
if [ $status = 0 ]; then
  browser_version=$("$CHROMIUM" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)+' | head -1)
  driver_version=$("$DRIVER" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)+' | head -1)
  if [ "${browser_version%%.*}" != "${driver_version%%.*}" ]; then
    log "FAILED: chromium $browser_version and chromium-driver $driver_version differ in major version" \
        "(apt-get install --only-upgrade chromium chromium-driver)"
    status=1
  else
    log "chromium $browser_version and chromium-driver $driver_version ready"
  fi
fi
exit $status
