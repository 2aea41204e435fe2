#!/usr/bin/env bash
# `make demo`, after install/migrate/seed: attach the demo citizens' emulated cards to PC/SC
# virtual readers (when pcscd and vsmartcard-vpcd are installed), then serve the platform.
#   citizen1 -> "Virtual PCD 00 00" (vpcd port 35963), citizen2 -> "Virtual PCD 00 01" (35964)
# Without pcscd the cards stay files in var/cards/<CIN>.json (`manage.py card_file citizen1` prints
# the path) that the agent drives in-process.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
# The demo is a development server on this machine: Django's debug pages on (their secrets masked,
# ecard/debug.py). The settings default to DEBUG off (ecard/settings.py).
export DEBUG="${DEBUG:-1}"
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
echo "E-Card demo on http://$HOST:$PORT/  (users in README.md, password ecard-demo)"
"$PY" manage.py runserver "$HOST:$PORT"
