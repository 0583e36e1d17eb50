#!/usr/bin/env bash
# Every benchmark, on a fresh machine too: provisions and starts local Kafka (reused if one
# answers), builds the stage components, then runs the host's benches (stage_call,
# component_load, pipeline_throughput). Results go to stdout; BENCHMARKS.md holds the record.
# For numbers comparable with BENCHMARKS.md, start from an empty broker: dev/kafka.sh reset.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dev/kafka.sh start
dev/build-stages.sh
# The original demo's stages in Python, for the one-process-per-stage comparison (build-stages
# made the virtualenv for componentize-py).
.local/venv/bin/pip install --quiet --disable-pip-version-check "confluent-kafka==2.16.1"
# BENCH_ONLY picks parts of pipeline_throughput, so with it set the other benches (criterion's,
# several minutes) are not run.
if [[ -n "${BENCH_ONLY:-}" ]]; then
  set -- --bench pipeline_throughput "$@"
fi
cargo bench -p pizza-host "$@"
