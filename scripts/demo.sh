#!/usr/bin/env bash
# `make demo`, after install/migrate/seed: attach the demo citizens' emulated cards to PC/SC
# virtual readers (when pcscd and vsmartcard-vpcd are installed), then serve the platform.
#   citizen1 -> "Virtual PCD 00 00" (vpcd port 35963), citizen2 -> "Virtual PCD 00 01" (35964)
# Without pcscd the cards stay files in var/cards/<CIN>.json (`manage.py card_file citizen1` prints
# the path) that the agent drives in-process.
# It also runs one audit-log witness (python -m audit.witness, the regulator's, on WITNESS_PORT,
# default 8100): its key is made on first run in var/witness.key (0600), its state is
# var/witness-state.json, and the platform sends it every new checkpoint (ECARD_WITNESSES).
# And one key service per demo bank (python -m keyservice serve var/keyservice/<bank>), which holds
# that bank's keys in its own SoftHSM2 token: the platform asks it to open and wrap every channel
# to the bank's security domains.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
# The demo is a development server on this machine: Django's debug pages on (their secrets masked,
# ecard/debug.py). The settings default to DEBUG off (ecard/settings.py).
export DEBUG="${DEBUG:-1}"
WITNESS_PORT=${WITNESS_PORT:-8100}
WITNESS_NAME=${WITNESS_NAME:-regulator.example/witness}
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if command -v pcscd >/dev/null && [ -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so ]; then
    pidof pcscd >/dev/null || pcscd 2>/dev/null || true
fi
if pidof pcscd >/dev/null; then
    port=35963
    for citizen in citizen1 citizen2; do
        if card_file=$("$PY" manage.py card_file "$citizen"); then
            "$PY" -m cardsim serve "$card_file" --vpcd "127.0.0.1:$port" &
            pids+=("$!")
            echo "card of $citizen ($card_file): reader 'Virtual PCD 00 0$((port - 35963))'"
        fi
        port=$((port + 1))
    done
else
    echo "pcscd with vsmartcard-vpcd is not running: demo cards stay in var/cards/ (agent --card-file \"\$(.venv/bin/python manage.py card_file citizen1)\")"
fi
mkdir -p var/log
# Each demo bank's own key service (docs/keyservice.md): its SoftHSM2 token, its TLS identity and
# its policy were made by seed_demo with `python -m keyservice init` in var/keyservice/<bank>/.
for dir in "${ECARD_KEYSERVICE_DIR:-var/keyservice}"/*/; do
    [ -f "$dir/config.json" ] || continue
    bank=$(basename "$dir")
    "$PY" -m keyservice serve "$dir" >"var/log/keyservice-$bank.log" 2>&1 &
    pids+=("$!")
    echo "key service of $bank: $(sed -n 's/.*"port": *\([0-9]*\).*/https:\/\/127.0.0.1:\1/p' "$dir/config.json" | head -1) (log var/log/keyservice-$bank.log)"
done
if [ ! -s var/witness.key ]; then
    "$PY" -m audit.witness keygen --name "$WITNESS_NAME" --out var/witness.key >/dev/null || exit 1
fi
witness_vkey=$("$PY" -m audit.witness vkey --key var/witness.key) || exit 1
# The log's origin and verifier key (the checkpoint key is created in key custody if it is new).
mapfile -t log_info < <("$PY" manage.py shell -c \
    "from django.conf import settings; from audit import services; print('@origin', settings.ECARD_LOG_ORIGIN); print('@vkey', services.log_verifier_key())" | sed -n 's/^@[a-z]* //p')
[ "${#log_info[@]}" -eq 2 ] || { echo "demo: cannot read the audit log's verifier key" >&2; exit 1; }
"$PY" -m audit.witness serve --key var/witness.key --log-origin "${log_info[0]}" --log-key "${log_info[1]}" \
    --host 127.0.0.1 --port "$WITNESS_PORT" --state var/witness-state.json &
pids+=("$!")
export ECARD_WITNESSES="[[\"regulator-witness\", \"http://127.0.0.1:$WITNESS_PORT\", \"$witness_vkey\"]]"
echo "audit witness on http://127.0.0.1:$WITNESS_PORT/ (verify exports with --witness '$witness_vkey' --quorum 1)"
echo "E-Card demo on http://$HOST:$PORT/  (users in README.md, password ecard-demo)"
"$PY" manage.py runserver "$HOST:$PORT"
