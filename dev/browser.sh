#!/usr/bin/env bash
# What the web page's browser test needs, installed on a fresh machine: Debian's Chromium
# (headless) and playwright-core from npm (which drives it; it downloads no browser).
# Prints the Chromium executable's path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

chromium="$(command -v chromium || true)"
if [[ -z "$chromium" ]]; then
  echo "browser: installing Debian's chromium (once, a minute or two)" >&2
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium >&2
  chromium="$(command -v chromium)"
fi
browser_dir="$root/host/tests/browser"
if [[ ! -d "$browser_dir/node_modules/playwright-core" ]]; then
  echo "browser: installing playwright-core (npm ci)" >&2
  npm ci --prefix "$browser_dir" --no-audit --no-fund --loglevel=error >&2
fi
echo "$chromium"
