#!/usr/bin/env bash
# Install the Debian packages the platform and its tests need, when missing.
#   libpcsclite-dev swig  build pyscard (no wheels on PyPI for Linux)
#   pcscd vsmartcard-vpcd  PC/SC daemon and the virtual reader the emulated card attaches to
#   softhsm2               PKCS#11 key custody backend in tests
#   chromium               portal tests through Playwright (no browser download at install time)
#   nodejs npm             axe-core accessibility checks in the browser tests
# Usage: scripts/sysdeps.sh            install what is missing (needs root and apt-get)
#        scripts/sysdeps.sh --check    only report; exit 1 when something is missing
set -euo pipefail

PACKAGES=(libpcsclite-dev swig pcscd vsmartcard-vpcd softhsm2 chromium)

missing=()
# Node.js may come from elsewhere than Debian (this image ships its own); only the commands matter.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
