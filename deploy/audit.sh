#!/usr/bin/env bash
# Checks the image's locked packages (requirements.lock, and requirements-cpu.lock when there is
# one) for known vulnerabilities with pip-audit, from .venv/tools (make tools installs it).
#
#   deploy/audit.sh                 fails on a vulnerability, and on a package it could not check
#   deploy/audit.sh --if-reachable  first asks the advisory service about a release with a known
#                                   vulnerability; when no advisory comes back (no network, a
#                                   mirror without PyPI's JSON API), says so and passes (make test)
#
# AUDIT_SERVICE: pypi (PyPI's JSON API, the default) or osv (api.osv.dev).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
AUDIT="${PIP_AUDIT:-$VENV/tools/bin/pip-audit}"
SERVICE="${AUDIT_SERVICE:-pypi}"

audit() {
    "$AUDIT" --vulnerability-service "$SERVICE" --disable-pip --strict --progress-spinner off "$@"
}

if [ "${1:-}" = "--if-reachable" ]; then
    probe=$(mktemp)
    trap 'rm -f "$probe"' EXIT
    # requests 2.19.0 has CVE-2018-18074 (PYSEC-2018-28) in every advisory database.
    echo "requests==2.19.0" >"$probe"
    # pip-audit exits 1 when it finds the advisory: what it prints decides, not its status.
    answer=$(audit --no-deps -r "$probe" 2>&1 || true)
    if ! grep -qE 'PYSEC-|GHSA-|CVE-' <<<"$answer"; then
        echo "deploy/audit.sh: SKIPPED: the $SERVICE advisory data cannot be reached from here" \
            "(requests 2.19.0 came back without its known advisory); run make audit where it can" >&2
        exit 0
    fi
fi

locks=(requirements.lock)
if [ -f requirements-cpu.lock ]; then
    locks+=(requirements-cpu.lock)
fi
for lock in "${locks[@]}"; do
    echo "deploy/audit.sh: pip-audit ($SERVICE) of $lock"
    audit -r "$lock"
done
