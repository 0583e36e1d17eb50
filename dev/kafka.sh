#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for development and tests.
#
#   dev/kafka.sh start    provision (Maven Central) and start the broker on 127.0.0.1:9092,
#                         or reuse one that already answers there; waits until it is ready
#   dev/kafka.sh stop     stop the broker this script started
#   dev/kafka.sh reset    stop it, delete its topics and data, start it afresh (tests leave
#                         thousands of topics behind, which slow the broker's start and the
#                         benchmarks)
#   dev/kafka.sh status   say whether a broker answers
#
# KAFKA_BOOTSTRAP=host:port points everything at an existing cluster instead: `start` then only
# checks that it answers and starts nothing. State lives in .local/kafka (git-ignored).
#
# A second broker beside the first (tests that stop and restart their own broker use this):
# KAFKA_PORT and KAFKA_CONTROLLER_PORT pick its ports and KAFKA_STATE its folder for config,
# data, logs and pid; the jars are shared. KAFKA_SASL_USERS="user:password ..." makes its
# client listener SASL_PLAINTEXT with the PLAIN mechanism and those users (the broker itself
# logs in as an extra user, `broker`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${KAFKA_STATE:-$root/.local/kafka}"
libs="$root/.local/kafka/libs"
pom="$root/dev/kafka/pom.xml"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
bootstrap="${KAFKA_BOOTSTRAP:-127.0.0.1:$port}"

log() { echo "kafka: $*" >&2; }

# True when something accepts TCP connections at host:port.
answers() {
  local host="${1%:*}" p="${1##*:}"
  (exec 3<>"/dev/tcp/$host/$p") 2>/dev/null
}

provision() {
  # Re-resolve only when the pom changed, so a warm machine starts in seconds.
  local stamp="$libs/.pom.sha256" want
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  log "resolving the broker jars from Maven Central (once)"
  rm -rf "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  echo "$want" >"$stamp"
}

write_config() {
  mkdir -p "$home/config" "$home/data" "$home/logs"
  local client=PLAINTEXT sasl=""
  if [[ -n "${KAFKA_SASL_USERS:-}" ]]; then
    client=SASL_PLAINTEXT
    local users='user_broker="broker-secret"' entry
    for entry in $KAFKA_SASL_USERS; do users+=" user_${entry%%:*}=\"${entry#*:}\""; done
    sasl="sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"broker\" password=\"broker-secret\" $users;"
  fi
  cat >"$home/config/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=$client://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$client://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=$client
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$client:$client
$sasl
log.dirs=$home/data
num.partitions=3
# The host creates the topics it needs; a typo must not silently create a new one.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$home/config/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$home/logs/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
EOF
}

java_cmd=(java -Xms256m -Xmx768m -XX:+UseG1GC
  -Dlog4j2.configurationFile="$home/config/log4j2.properties" -cp "$libs/*")

start() {
  if answers "$bootstrap"; then
    log "a broker answers at $bootstrap; reusing it"
    return
  fi
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP does not answer; not starting a local broker for it"
    exit 1
  fi
  command -v java >/dev/null || { log "java (17+) is required"; exit 1; }
  command -v mvn >/dev/null || { log "mvn is required to fetch the broker"; exit 1; }
  provision
  write_config
  if [[ ! -f "$home/data/meta.properties" ]]; then
    local cluster_id
    cluster_id="$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid)"
    "${java_cmd[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$home/config/server.properties" >"$home/logs/format.log" 2>&1
  fi
  : >"$home/logs/server.log"
  log "starting the broker on 127.0.0.1:$port (logs: $home/logs)"
  nohup "${java_cmd[@]}" kafka.Kafka "$home/config/server.properties" \
    >"$home/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$home/broker.pid"
  # Ready means the broker logged that it started, not merely that the port is open.
  local deadline=$((SECONDS + 90))
  until answers "$bootstrap" && grep -q "Kafka Server started" "$home/logs/server.log"; do
    if ! kill -0 "$(cat "$home/broker.pid")" 2>/dev/null; then
      log "the broker exited during startup:"; tail -n 30 "$home/logs/stdout.log" >&2; exit 1
    fi
    if ((SECONDS > deadline)); then
      log "the broker did not become ready in 90 s:"; tail -n 30 "$home/logs/server.log" >&2; exit 1
    fi
    sleep 0.5
  done
  log "ready at $bootstrap"
}

stop() {
  local pidfile="$home/broker.pid"
  if [[ ! -f "$pidfile" ]]; then log "no broker started by this script"; return; fi
  local pid; pid="$(cat "$pidfile")"
  if kill "$pid" 2>/dev/null; then
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS > deadline)); then kill -9 "$pid" 2>/dev/null || true; fi
      sleep 0.2
    done
    log "stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf "$home/data"; start ;;
  status) if answers "$bootstrap"; then log "up at $bootstrap"; else log "down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|reset|status" >&2; exit 2 ;;
esac
