#!/usr/bin/env bash
# Fuzzes a running host's HTTP API from its own OpenAPI document with schemathesis (PyPI),
# installed on first use into .local/venv:
#
#   dev/schemathesis.sh http://127.0.0.1:5000 [more schemathesis options]
#
# Every check runs (no 5xx, every status and body as documented, …) with a bounded number of
# examples per operation; the live stream (/events, which never ends) is left out. The seed is
# fixed so a run can be repeated (SCHEMATHESIS_SEED picks another).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.local/venv"
version=4.32.5
url="${1:?usage: dev/schemathesis.sh <host url> [options]}"
shift
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  echo "schemathesis: installing $version into .local/venv (once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version" >&2
fi
# Its cache of found failures goes to .local, not wherever the caller stands.
cd "$root/.local"
exec "$venv/bin/st" run "$url/openapi.json" --url "$url" --checks all \
  --exclude-path /events --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" \
  --seed "${SCHEMATHESIS_SEED:-20261126}" --no-color "$@"
