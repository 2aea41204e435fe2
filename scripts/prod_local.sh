#!/usr/bin/env bash
# The production topology on one machine (docs/deploy.md):
#   gunicorn web workers (PROD_WEB_GROUPS groups, default 1: separate masters on PROD_PORT, PROD_PORT+1, ...),
#   two Celery worker processes, Celery beat, one audit-log witness
#   (python -m audit.witness on PROD_WITNESS_PORT, default 8101; key var/witness.key made on first run),
#   on the local PostgreSQL (database ecard_prod) and Redis (broker db 0, cache db 1),
#   DEBUG off, JSON logs in var/log/, PID files in var/run/.
#
#   scripts/prod_local.sh start     generate var/prod.env once, migrate, collectstatic, start everything
#   scripts/prod_local.sh stop      stop what start started (PID files), wait for it to exit
#   scripts/prod_local.sh status    which processes run
#   scripts/prod_local.sh env       print the environment (secrets masked)
#   scripts/prod_local.sh manage ARGS...   run manage.py ARGS in that environment (seed_load, rotate_kek, ...)
#
# HTTPS by default: a self-signed certificate for 127.0.0.1/localhost is generated once into var/tls/
# (clients trust it with SSL_CERT_FILE=var/tls/cert.pem); PROD_TLS=0 serves plain HTTP instead
# (then no HSTS, no SSL redirect, and check --deploy is held to errors only).
#
# Overrides (environment): PROD_PORT (8000), PROD_WEB_GROUPS (1), PROD_DB (ecard_prod), PROD_TLS (1), WEB_CONCURRENCY,
# GUNICORN_THREADS, ECARD_RELAY_RATE, ECARD_RELAY_IP_RATE, CELERY_WORKERS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VAR=${PROD_VAR:-$ROOT/var}
RUN=$VAR/run
LOG=$VAR/log
ENV_FILE=$VAR/prod.env
PY=$ROOT/.venv/bin/python
PORT=${PROD_PORT:-8000}
# Scale-out on one machine: N independent gunicorn masters (web, web2, ...) on consecutive ports, one
# database, no session affinity (any group takes any exchange of any session; docs/deploy.md).
WEB_GROUPS=${PROD_WEB_GROUPS:-1}
DB=${PROD_DB:-ecard_prod}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}
CELERY_WORKERS=${CELERY_WORKERS:-2}
WITNESS_PORT=${PROD_WITNESS_PORT:-8101}
# The demo banks' key services (seed_demo makes their directories; docs/keyservice.md): ports from here.
KEYSERVICE_PORT=${PROD_KEYSERVICE_PORT:-8561}
WITNESS_KEY=$VAR/witness.key
PROD_TLS=${PROD_TLS:-1}
TLS_DIR=$VAR/tls

die() { echo "prod-local: $*" >&2; exit 1; }

make_env_file() {
    # Secrets are generated here, once, never stored in the repository (var/ is git-ignored).
    mkdir -p "$VAR"
    if [ ! -s "$ENV_FILE" ]; then
        (
            umask 077
            "$PY" - "$ENV_FILE" <<'EOF'
import secrets, sys
with open(sys.argv[1], "w") as out:
    out.write("# prod-local secrets, generated once by scripts/prod_local.sh (mode 0600; never commit)\n")
    out.write(f"SECRET_KEY={secrets.token_urlsafe(50)}\n")
    out.write(f"ECARD_MASTER_KEY={secrets.token_hex(32)}\n")
EOF
        )
        echo "prod-local: generated $ENV_FILE (SECRET_KEY, ECARD_MASTER_KEY)"
    fi
    chmod 600 "$ENV_FILE"
}

make_tls() {
    [ -s "$TLS_DIR/cert.pem" ] && [ -s "$TLS_DIR/key.pem" ] && return
    mkdir -p "$TLS_DIR"
    (
        umask 077
        "$PY" - "$TLS_DIR" <<'EOF'
import datetime, ipaddress, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
out = Path(sys.argv[1])
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecard prod-local")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825))
    .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
)
(out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
(out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
EOF
    )
    chmod 600 "$TLS_DIR/key.pem"
    echo "prod-local: generated a self-signed TLS certificate in $TLS_DIR (trust it with SSL_CERT_FILE=$TLS_DIR/cert.pem)"
}

load_env() {
    make_env_file
    set -a
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    set +a
    export DEBUG=0
    export DJANGO_SETTINGS_MODULE=ecard.settings
    export DATABASE_URL=${DATABASE_URL_PROD:-postgres://postgres@$PG_HOST:$PG_PORT/$DB}
    export CELERY_BROKER_URL=${CELERY_BROKER_URL_PROD:-redis://$REDIS_HOST:$REDIS_PORT/0}
    export CACHE_URL=${CACHE_URL_PROD:-redis://$REDIS_HOST:$REDIS_PORT/1}
    export ALLOWED_HOSTS=${ALLOWED_HOSTS:-127.0.0.1,localhost}
    export LOG_FORMAT=json
    export LOG_LEVEL=${LOG_LEVEL:-INFO}
    export STATIC_ROOT=${STATIC_ROOT:-$VAR/static-prod}
    export ECARD_VAR_DIR=$VAR
    export ECARD_CARDS_DIR=${ECARD_CARDS_DIR:-$VAR/cards-prod}
    if [ "$PROD_TLS" = 1 ]; then
        # gunicorn terminates TLS: HSTS is sent (Django sends it only over HTTPS), http is redirected.
        make_tls
        export GUNICORN_CERTFILE=$TLS_DIR/cert.pem GUNICORN_KEYFILE=$TLS_DIR/key.pem
        export SECURE_SSL_REDIRECT=1
        SCHEME=https
        CHECK_LEVEL=WARNING
    else
        # Plain HTTP on loopback (a hop behind a TLS proxy): no HSTS header is sent, no redirect.
        export SECURE_SSL_REDIRECT=0
        SCHEME=http
        CHECK_LEVEL=ERROR
    fi
    export SSL_CERT_FILE=$TLS_DIR/cert.pem
    # Relay throttles stay on, set high enough for bench/bench_load.py (one address, many devices).
    # Per second, not per minute: DRF's throttle keeps the timestamps of every request inside its
    # window in the cache and reads and rewrites that list on each request, so a one-minute window
    # at hundreds of requests/s from one address would move a list of ~10^4 entries per request.
    # The audit log is sequenced by Celery beat (every second) and before reads, not by the web
    # processes after each commit: appending transactions stay one INSERT (docs/audit.md).
    export ECARD_AUDIT_SEQUENCE_ON_COMMIT=${ECARD_AUDIT_SEQUENCE_ON_COMMIT:-0}
    export ECARD_RELAY_RATE=${ECARD_RELAY_RATE:-1000/s}
    export ECARD_RELAY_IP_RATE=${ECARD_RELAY_IP_RATE:-10000/s}
    # The regulator's witness (run here for the local topology; in production on the regulator's own
    # machine): its key is generated once, and the platform sends it every new checkpoint.
    if [ ! -s "$WITNESS_KEY" ]; then
        "$PY" -m audit.witness keygen --name "${WITNESS_NAME:-regulator.example/witness}" --out "$WITNESS_KEY" >/dev/null
        echo "prod-local: generated the witness key $WITNESS_KEY (mode 0600)"
    fi
    WITNESS_VKEY=$("$PY" -m audit.witness vkey --key "$WITNESS_KEY")
    export ECARD_WITNESSES=${ECARD_WITNESSES:-"[[\"regulator-witness\", \"http://127.0.0.1:$WITNESS_PORT\", \"$WITNESS_VKEY\"]]"}
    export GUNICORN_BIND=${GUNICORN_BIND:-127.0.0.1:$PORT}
    # One web process per core across the groups (docs/benchmarks.md, "Load analysis").
    export WEB_CONCURRENCY=${WEB_CONCURRENCY:-$(( $(nproc) / WEB_GROUPS > 0 ? $(nproc) / WEB_GROUPS : 1 ))}
    export GUNICORN_THREADS=${GUNICORN_THREADS:-8}
    export GUNICORN_TIMEOUT=${GUNICORN_TIMEOUT:-30}
    export GUNICORN_CONTROL_SOCKET=${GUNICORN_CONTROL_SOCKET:-$RUN/gunicorn.ctl}
    # Every group's base URL, comma-separated (bench/bench_load.py round-robins its requests over them).
    local urls="$SCHEME://$GUNICORN_BIND" g
    for g in $(seq 2 "$WEB_GROUPS"); do
        urls="$urls,$SCHEME://127.0.0.1:$(group_port "$g")"
    done
    export PROD_WEB_URLS=$urls
    export PYTHONUNBUFFERED=1
    export ECARD_KEYSERVICE_DIR=${ECARD_KEYSERVICE_DIR:-$VAR/keyservice}
    export ECARD_KEYSERVICE_CLIENT_DIR=${ECARD_KEYSERVICE_CLIENT_DIR:-$VAR/keyservice-client}
    export ECARD_DEMO_KEYSERVICE_PORT=$KEYSERVICE_PORT
}

group_port() { echo $((PORT + $1 - 1)); }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_bg() {
    # start_bg NAME COMMAND...: run in its own session, log to var/log/NAME.log, PID in var/run/NAME.pid
    local name=$1; shift
    if pid_alive "$RUN/$name.pid"; then
        echo "prod-local: $name already runs (pid $(cat "$RUN/$name.pid"))"
        return
    fi
    setsid "$@" >>"$LOG/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN/$name.pid"
    echo "prod-local: $name started (pid $!), log $LOG/$name.log"
}

wait_http() {
    # wait_http PORT
    for _ in $(seq 1 60); do
        if "$PY" - "$SCHEME://127.0.0.1:$1/healthz" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
        then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

cmd_start() {
    load_env
    mkdir -p "$RUN" "$LOG" "$ECARD_CARDS_DIR"
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL is not answering on $PG_HOST:$PG_PORT"
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null || die "Redis is not answering on $REDIS_HOST:$REDIS_PORT"
    if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
        psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -q -c "CREATE DATABASE $DB"
        echo "prod-local: created database $DB"
    fi
    "$PY" manage.py migrate --noinput >>"$LOG/deploy.log" 2>&1 || die "migrate failed (see $LOG/deploy.log)"
    "$PY" manage.py collectstatic --noinput >>"$LOG/deploy.log" 2>&1 || die "collectstatic failed (see $LOG/deploy.log)"
    "$PY" manage.py check --deploy --fail-level "$CHECK_LEVEL" >>"$LOG/deploy.log" 2>&1 \
        || die "manage.py check --deploy failed (see $LOG/deploy.log)"
    # The demo world (idempotent): agency, Alpha and Beta with their own key services, citizens.
    [ "${PROD_SEED_DEMO:-1}" = 1 ] && { "$PY" manage.py seed_demo >>"$LOG/deploy.log" 2>&1 || die "seed_demo failed (see $LOG/deploy.log)"; }
    start_witness
    start_key_services
    start_bg web "$ROOT/.venv/bin/gunicorn" -c "$ROOT/ecard/gunicorn.conf.py" ecard.wsgi:application
    local g
    for g in $(seq 2 "$WEB_GROUPS"); do
        # Another master with its own workers, port and control socket; same environment otherwise.
        start_bg "web$g" env GUNICORN_BIND="127.0.0.1:$(group_port "$g")" \
            GUNICORN_CONTROL_SOCKET="$RUN/gunicorn$g.ctl" \
            "$ROOT/.venv/bin/gunicorn" -c "$ROOT/ecard/gunicorn.conf.py" ecard.wsgi:application
    done
    for n in $(seq 1 "$CELERY_WORKERS"); do
        start_bg "worker$n" "$ROOT/.venv/bin/celery" -A ecard worker --pool solo -n "worker$n@%h" \
            --without-gossip --without-mingle -l INFO
    done
    start_bg beat "$ROOT/.venv/bin/celery" -A ecard beat -l INFO -s "$RUN/celerybeat-schedule" \
        --pidfile=
    for g in $(seq 1 "$WEB_GROUPS"); do
        wait_http "$(group_port "$g")" || die "web group $g did not become healthy (see $LOG/web*.log)"
    done
    echo "prod-local: serving ${PROD_WEB_URLS//,/ and } (DEBUG off; stop with: make prod-local-stop)"
}

start_key_services() {
    # Each bank's key service, run here for the local topology (a real bank runs its own, on its
    # premises: docs/deploy.md); its token, TLS identity and policy are in its directory.
    local dir
    for dir in "$ECARD_KEYSERVICE_DIR"/*/; do
        [ -f "$dir/config.json" ] || continue
        start_bg "keyservice-$(basename "$dir")" "$PY" -m keyservice serve "$dir"
    done
}

start_witness() {
    # The witness needs the log's verifier key, which exists once there is an agency to own it
    # (seed data or onboarding). Until then it is not started; the platform's pushes wait (they
    # retry, and beat re-sends the latest checkpoint), and the next `make prod-local` starts it.
    local log_info
    mapfile -t log_info < <("$PY" manage.py shell -c "from django.conf import settings; from audit import services
from ecard.errors import ServiceError
try:
    vkey = services.log_verifier_key()
except ServiceError:
    vkey = None
if vkey:
    print('@origin', settings.ECARD_LOG_ORIGIN)
    print('@vkey', vkey)" 2>>"$LOG/deploy.log" | sed -n 's/^@[a-z]* //p')
    if [ "${#log_info[@]}" -ne 2 ]; then
        echo "prod-local: witness not started: the audit log has no signing key yet (no agency); run make prod-local again once there is one"
        return
    fi
    start_bg witness "$PY" -m audit.witness serve --key "$WITNESS_KEY" --log-origin "${log_info[0]}" \
        --log-key "${log_info[1]}" --host 127.0.0.1 --port "$WITNESS_PORT" --state "$VAR/witness-state.json"
}

cmd_stop() {
    local any=0
    for pidfile in "$RUN"/*.pid; do
        [ -e "$pidfile" ] || continue
        local name pid
        name=$(basename "$pidfile" .pid)
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            any=1
            for _ in $(seq 1 60); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.5
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "prod-local: $name (pid $pid) did not stop in 30 s; SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "prod-local: $name stopped"
        fi
        rm -f "$pidfile"
    done
    [ "$any" = 1 ] || echo "prod-local: nothing was running"
}

cmd_status() {
    local rc=0
    for name in web $(seq -f "web%g" 2 "$WEB_GROUPS") $(seq -f "worker%g" 1 "$CELERY_WORKERS") beat; do
        if pid_alive "$RUN/$name.pid"; then
            echo "$name: running (pid $(cat "$RUN/$name.pid"))"
        else
            echo "$name: stopped"
            rc=1
        fi
    done
    # The witness is the regulator's (optional here: it starts once the log has a key).
    if pid_alive "$RUN/witness.pid"; then
        echo "witness: running (pid $(cat "$RUN/witness.pid"))"
    else
        echo "witness: stopped"
    fi
    local pidfile
    for pidfile in "$RUN"/keyservice-*.pid; do
        [ -e "$pidfile" ] || continue
        if pid_alive "$pidfile"; then
            echo "$(basename "$pidfile" .pid): running (pid $(cat "$pidfile"))"
        else
            echo "$(basename "$pidfile" .pid): stopped"
        fi
    done
    return $rc
}

cmd_env() {
    load_env
    env | grep -E '^(DEBUG|DATABASE_URL|CELERY_BROKER_URL|CACHE_URL|ALLOWED_HOSTS|LOG_FORMAT|STATIC_ROOT|ECARD_|GUNICORN_|WEB_CONCURRENCY|PROD_WEB_URLS|SECRET_KEY|SECURE_SSL_REDIRECT|SSL_CERT_FILE)=' \
        | sed -E 's/^(SECRET_KEY|ECARD_MASTER_KEY)=.*/\1=***/' | sort
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    manage) shift; load_env; exec "$PY" manage.py "$@" ;;
    # For tools (bench/loadkit.py): the whole environment as JSON on stdout, secrets included.
    env-json) load_env; exec "$PY" -c 'import json, os; print(json.dumps(dict(os.environ)))' ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
