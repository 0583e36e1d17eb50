#!/usr/bin/env bash
# The demo in one command: local Kafka (unless one answers, or KAFKA_BOOTSTRAP points
# elsewhere), the stage components, and `pizza-host run pipeline.toml` on http://127.0.0.1:5000.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dev/kafka.sh start
dev/build-stages.sh
# glibc's malloc keeps freed memory in up to 8 arenas per core; two keep the host's peak
# resident memory under a burst at about 170 MiB instead of 300 (BENCHMARKS.md).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec cargo run --release -p pizza-host -- run pipeline.toml "$@"
