#!/usr/bin/env bash
# Installs the browser the report tests drive: Debian's `chromium` package (headless), if no chromium is found.
#
# Idempotent and quiet on success: nothing is installed when `chromium` (or $CHROMIUM_BIN) is already there. Runs
# `apt-get update` only when apt cannot find the package yet. Uses `sudo -n` (never prompts) when not run as root.
#
# Usage: scripts/install_browser_deps.sh
# Knobs (env): CHROMIUM_BIN (a chromium binary to use instead of the one on PATH).
set -euo pipefail

log() { printf '[install_browser_deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

have_chromium() {
  [[ -n "${CHROMIUM_BIN:-}" && -x "${CHROMIUM_BIN}" ]] && return 0
  command -v chromium >/dev/null 2>&1
}

if have_chromium; then
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "chromium is missing and apt-get is not available: install chromium by hand"
SUDO=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "chromium is missing; run this script as root or install sudo"
  SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
if [[ -z "$(apt-cache policy chromium 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)')" ]]; then
  quiet "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
fi
# fonts-dejavu-core: the report's text renders the same everywhere (chromium's own recommends are skipped).
quiet "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core \
  || die "apt-get install chromium failed"
have_chromium || die "chromium still not found after apt-get install"
