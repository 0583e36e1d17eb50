#!/usr/bin/env bash
# Builds every stage component in functions/ (and the test components in host/tests/components/),
# installing what that needs on a fresh machine:
#   Rust crates        cargo component build --release (the wasm32-wasip1 target, cargo-component)
#   Python (app.py)    componentize-py, from PyPI into .local/venv
#   JavaScript (package.json)  jco + componentize-js, from npm into the stage's node_modules
# Components land in target/wasm32-wasip1/release/pizza_stage_<name>.wasm (dashes become
# underscores). A Python or JavaScript stage is rebuilt only when its sources or the WIT changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The versions the stages are tested with; a newer one may name its outputs differently.
CARGO_COMPONENT_VERSION=0.21.1
COMPONENTIZE_PY_VERSION=0.25.1

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "build-stages: adding the wasm32-wasip1 target" >&2
  rustup target add wasm32-wasip1
fi
if ! cargo component --version 2>/dev/null | grep -q "$CARGO_COMPONENT_VERSION"; then
  echo "build-stages: installing cargo-component $CARGO_COMPONENT_VERSION (once, a few minutes)" >&2
  cargo install cargo-component --locked --version "$CARGO_COMPONENT_VERSION"
fi

# A component is a crate there that builds a cdylib; the rest are libraries.
packages=()
for manifest in functions/*/Cargo.toml host/tests/components/*/Cargo.toml; do
  if grep -q 'crate-type = \["cdylib"' "$manifest"; then
    packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n1)")
  fi
done
cargo component build --release "${packages[@]}" "$@"

out=target/wasm32-wasip1/release
# Whether $1 exists and is newer than every other argument.
up_to_date() {
  local output=$1; shift
  [[ -f $output ]] || return 1
  [[ -z $(find "$@" -newer "$output" -type f -not -path '*/node_modules/*' 2>/dev/null | head -n1) ]]
}

shopt -s nullglob
python_stages=(functions/*/app.py)
if ((${#python_stages[@]})); then
  venv=.local/venv
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
    echo "build-stages: installing componentize-py $COMPONENTIZE_PY_VERSION" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
  fi
  for app in "${python_stages[@]}"; do
    dir=$(dirname "$app"); name=$(basename "$dir"); wasm=$out/pizza_stage_${name//-/_}.wasm
    up_to_date "$wasm" "$dir" wit && continue
    echo "build-stages: $dir (componentize-py)" >&2
    "$venv/bin/componentize-py" -d wit -w topping componentize -p "$dir" app -o "$wasm"
  done
fi

for manifest in functions/*/package.json; do
  dir=$(dirname "$manifest"); name=$(basename "$dir"); wasm=$out/pizza_stage_${name//-/_}.wasm
  up_to_date "$wasm" "$dir" wit && continue
  echo "build-stages: $dir (jco)" >&2
  # npm ci installs exactly the locked versions (jco pins @bytecodealliance/preview2-shim
  # 0.25.0 through `overrides`: 0.26 no longer lets jco read the WIT folder).
  install=install; [[ -f $dir/package-lock.json ]] && install=ci
  (cd "$dir" && npm "$install" --no-audit --no-fund --loglevel=error && npm run --silent build)
  cp "$dir/stage.wasm" "$wasm"
done
