#!/usr/bin/env bash
# Every test, on a fresh machine too: provisions and starts local Kafka (reused if one
# answers), builds the stage components, then runs the workspace's tests against them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dev/kafka.sh start
dev/build-stages.sh
cargo test --release --workspace "$@"
