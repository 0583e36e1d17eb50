#!/usr/bin/env bash
# Builds every stage component in functions/ (and the test components in host/tests/components/)
# with `cargo component build --release`,
# installing what that needs on a fresh machine: the wasm32-wasip1 target and cargo-component.
# Components land in target/wasm32-wasip1/release/pizza_stage_<name>.wasm.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The version the stages are tested with; a newer one may name its outputs differently.
CARGO_COMPONENT_VERSION=0.21.1

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
