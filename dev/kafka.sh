#!/usr/bin/env bash
# Local Apache Kafka (KRaft) for development and tests: one broker by default, or a cluster of
# three.
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
#
# A broker as far away as a remote one (single broker only): KAFKA_REMOTE_RTT_MS=N gives the
# broker a second client listener, reached only through Toxiproxy (installed from the Go module
# proxy into .local/toxiproxy) on 127.0.0.1:${KAFKA_REMOTE_PORT:-19092}, which delays each
# direction by N/2 ms; the broker's own traffic stays on loopback, as a cluster's does on its
# network. Clients that bootstrap there (KAFKA_BOOTSTRAP=127.0.0.1:19092) see a broker N ms
# away; its byte counts are at http://127.0.0.1:8474/metrics. `stop` stops the proxy too.
#
# A cluster of three (each node a broker and a controller; replication 3, min.insync.replicas
# 2; smaller heaps): add `--brokers 3` to any command, e.g. `dev/kafka.sh start --brokers 3`.
# Clients on 127.0.0.1:9092-9094 and controllers on 9192-9194 unless KAFKA_PORTS and
# KAFKA_CONTROLLER_PORTS list three ports each; state in .local/kafka-cluster (or KAFKA_STATE),
# a folder per node. Both layouts use 9092 by default: stop one before starting the other.
# One node at a time, as the failure tests do:
#   dev/kafka.sh kill-node N --brokers 3    kill -9 node N (1-3)
#   dev/kafka.sh stop-node N --brokers 3    stop it gracefully
#   dev/kafka.sh start-node N --brokers 3   start it again on its data; waits until ready
set -euo pipefail

command="${1:-}"
node_arg=""
brokers=1
shift || true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --brokers) brokers="$2"; shift 2 ;;
    --brokers=*) brokers="${1#*=}"; shift ;;
    *) node_arg="$1"; shift ;;
  esac
done
[[ "$brokers" == 1 || "$brokers" == 3 ]] || { echo "kafka: --brokers is 1 or 3" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
libs="$root/.local/kafka/libs"
pom="$root/dev/kafka/pom.xml"
if ((brokers == 1)); then
  cluster_home="${KAFKA_STATE:-$root/.local/kafka}"
  read -r -a ports <<<"${KAFKA_PORT:-9092}"
  read -r -a controller_ports <<<"${KAFKA_CONTROLLER_PORT:-9093}"
  heap=768m
else
  cluster_home="${KAFKA_STATE:-$root/.local/kafka-cluster}"
  read -r -a ports <<<"${KAFKA_PORTS:-9092 9093 9094}"
  read -r -a controller_ports <<<"${KAFKA_CONTROLLER_PORTS:-9192 9193 9194}"
  heap=512m
  if ((${#ports[@]} != 3 || ${#controller_ports[@]} != 3)); then
    echo "kafka: KAFKA_PORTS and KAFKA_CONTROLLER_PORTS need three ports each" >&2
    exit 2
  fi
fi
remote_rtt="${KAFKA_REMOTE_RTT_MS:-}"
remote_port="${KAFKA_REMOTE_PORT:-19092}"
toxiproxy_home="$root/.local/toxiproxy"
if [[ -n "$remote_rtt" ]] && ((brokers != 1)); then
  echo "kafka: KAFKA_REMOTE_RTT_MS is for the single broker" >&2
  exit 2
fi
local_bootstrap=""
for p in "${ports[@]}"; do local_bootstrap+="${local_bootstrap:+,}127.0.0.1:$p"; done
bootstrap="${KAFKA_BOOTSTRAP:-$local_bootstrap}"

log() { echo "kafka: $*" >&2; }

# Node N's folder: the only one for a single broker, node-N in a cluster.
node_home() {
  if ((brokers == 1)); then echo "$cluster_home"; else echo "$cluster_home/node-$1"; fi
}

# True when something accepts TCP connections at every host:port of a comma-separated list.
answers() {
  local address
  for address in ${1//,/ }; do
    (exec 3<>"/dev/tcp/${address%:*}/${address##*:}") 2>/dev/null || return 1
  done
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

# Writes node N's configuration.
write_config() {
  local id="$1" home
  home="$(node_home "$id")"
  local port="${ports[$((id - 1))]}" controller_port="${controller_ports[$((id - 1))]}"
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
  local quorum replication=1 min_isr=1
  if ((brokers == 1)); then
    quorum="controller.quorum.bootstrap.servers=127.0.0.1:$controller_port"
  else
    local voters="" i
    for i in 1 2 3; do voters+="${voters:+,}$i@127.0.0.1:${controller_ports[$((i - 1))]}"; done
    quorum="controller.quorum.voters=$voters"
    replication=3
    min_isr=2
  fi
  # The remote listener binds next to the proxy's port and advertises the proxy, so a client
  # that came in through the proxy stays behind it.
  local remote_listener="" remote_advertised="" remote_protocol=""
  if [[ -n "$remote_rtt" ]]; then
    remote_listener=",REMOTE://127.0.0.1:$((remote_port + 1))"
    remote_advertised=",REMOTE://127.0.0.1:$remote_port"
    remote_protocol=",REMOTE:$client"
  fi
  cat >"$home/config/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
$quorum
listeners=$client://127.0.0.1:$port$remote_listener,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$client://127.0.0.1:$port$remote_advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=$client
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$client:$client$remote_protocol
$sasl
log.dirs=$home/data
num.partitions=3
# The host creates the topics it needs; a typo must not silently create a new one.
auto.create.topics.enable=false
default.replication.factor=$replication
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
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

# Runs a Kafka main class as node N would (its heap and log configuration).
java_for() {
  local id="$1"
  shift
  java -Xms256m "-Xmx$heap" -XX:+UseG1GC \
    "-Dlog4j2.configurationFile=$(node_home "$id")/config/log4j2.properties" -cp "$libs/*" "$@"
}

# Formats the storage of every node that has none, all with one cluster id.
format() {
  local id home cluster_id="" standalone=()
  ((brokers == 1)) && standalone=(--standalone)
  for id in $(seq 1 "$brokers"); do
    home="$(node_home "$id")"
    write_config "$id"
    [[ -f "$home/data/meta.properties" ]] && continue
    if [[ -z "$cluster_id" ]] &&
      ! cluster_id="$(java_for "$id" kafka.tools.StorageTool random-uuid 2>"$home/logs/format.log")"; then
      log "cannot make a cluster id:"
      cat "$home/logs/format.log" >&2
      exit 1
    fi
    if ! java_for "$id" kafka.tools.StorageTool format "${standalone[@]}" -t "$cluster_id" \
      -c "$home/config/server.properties" >"$home/logs/format.log" 2>&1; then
      log "cannot format the storage of node $id:"
      tail -n 30 "$home/logs/format.log" >&2
      exit 1
    fi
  done
}

# Starts node N on its data without waiting for it.
launch_node() {
  local id="$1" home
  home="$(node_home "$id")"
  write_config "$id"
  : >"$home/logs/server.log"
  nohup java -Xms256m "-Xmx$heap" -XX:+UseG1GC \
    "-Dlog4j2.configurationFile=$home/config/log4j2.properties" -cp "$libs/*" \
    kafka.Kafka "$home/config/server.properties" >"$home/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$home/broker.pid"
}

# Waits until node N logged that it started (not merely that its port is open).
await_node() {
  local id="$1" home
  home="$(node_home "$id")"
  local deadline=$((SECONDS + 120))
  until answers "127.0.0.1:${ports[$((id - 1))]}" && grep -q "Kafka Server started" "$home/logs/server.log"; do
    if ! kill -0 "$(cat "$home/broker.pid")" 2>/dev/null; then
      log "node $id exited during startup:"
      tail -n 30 "$home/logs/stdout.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "node $id did not become ready in 120 s:"
      tail -n 30 "$home/logs/server.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

start() {
  if answers "$bootstrap"; then
    log "a broker answers at $bootstrap; reusing it"
    # Tests start brokers of their own beside it, several at once: they need the jars here.
    if [[ -z "${KAFKA_BOOTSTRAP:-}" ]] && command -v mvn >/dev/null; then provision; fi
    if [[ -n "$remote_rtt" ]] && ! answers "127.0.0.1:$remote_port"; then
      answers "127.0.0.1:$((remote_port + 1))" ||
        { log "the running broker has no remote listener: dev/kafka.sh stop first"; exit 1; }
      start_remote_proxy
    fi
    return
  fi
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP does not answer; not starting a local broker for it"
    exit 1
  fi
  command -v java >/dev/null || { log "java (17+) is required"; exit 1; }
  command -v mvn >/dev/null || { log "mvn is required to fetch the broker"; exit 1; }
  provision
  format
  log "starting $brokers broker(s) on $bootstrap (logs: $cluster_home)"
  local id
  # All nodes first, then the wait: a cluster's node is ready only once a quorum of
  # controllers runs.
  for id in $(seq 1 "$brokers"); do launch_node "$id"; done
  for id in $(seq 1 "$brokers"); do await_node "$id"; done
  log "ready at $bootstrap"
  if [[ -n "$remote_rtt" ]]; then start_remote_proxy; fi
}

# Puts Toxiproxy in front of the broker's remote listener with half the round trip added in
# each direction.
start_remote_proxy() {
  local server="$toxiproxy_home/bin/server"
  mkdir -p "$toxiproxy_home"
  if [[ ! -x "$server" ]]; then
    command -v go >/dev/null || { log "go is required to install Toxiproxy"; exit 1; }
    log "installing Toxiproxy from the Go module proxy (once)"
    GOBIN="$toxiproxy_home/bin" go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0
  fi
  stop_remote_proxy
  nohup "$server" -host 127.0.0.1 -proxy-metrics >"$toxiproxy_home/server.log" 2>&1 </dev/null &
  echo $! >"$toxiproxy_home/server.pid"
  local api=http://127.0.0.1:8474 deadline=$((SECONDS + 30))
  until curl -sf "$api/version" >/dev/null; do
    ((SECONDS < deadline)) || { log "Toxiproxy did not start:"; cat "$toxiproxy_home/server.log" >&2; exit 1; }
    sleep 0.2
  done
  curl -sf -X POST "$api/proxies" -d "{\"name\":\"kafka\",\"listen\":\"127.0.0.1:$remote_port\",\"upstream\":\"127.0.0.1:$((remote_port + 1))\"}" >/dev/null
  local stream half_ms=$((remote_rtt / 2))
  for stream in upstream downstream; do
    curl -sf -X POST "$api/proxies/kafka/toxics" \
      -d "{\"type\":\"latency\",\"stream\":\"$stream\",\"attributes\":{\"latency\":$half_ms}}" >/dev/null
  done
  log "a remote broker, $((half_ms * 2)) ms away: 127.0.0.1:$remote_port"
}

stop_remote_proxy() {
  local pidfile="$toxiproxy_home/server.pid"
  [[ -f "$pidfile" ]] || return 0
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
}

# Stops node N: gracefully (TERM), or at once with KILL.
stop_node() {
  local home pidfile pid signal="${2:-TERM}"
  home="$(node_home "$1")"
  pidfile="$home/broker.pid"
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill "-$signal" "$pid" 2>/dev/null; then
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS > deadline)); then kill -9 "$pid" 2>/dev/null || true; fi
      sleep 0.2
    done
  fi
  rm -f "$pidfile"
}

stop() {
  local id stopped=0
  for id in $(seq 1 "$brokers"); do
    [[ -f "$(node_home "$id")/broker.pid" ]] && stopped=1
    stop_node "$id"
  done
  stop_remote_proxy
  if ((stopped)); then log "stopped"; else log "no broker started by this script"; fi
}

# The node named on the command line.
named_node() {
  if [[ ! "$node_arg" =~ ^[1-3]$ ]] || ((node_arg > brokers)); then
    echo "kafka: name a node from 1 to $brokers" >&2
    exit 2
  fi
  echo "$node_arg"
}

case "$command" in
  start) start ;;
  stop) stop ;;
  reset)
    stop
    for id in $(seq 1 "$brokers"); do rm -rf "$(node_home "$id")/data"; done
    start
    ;;
  status) if answers "$bootstrap"; then log "up at $bootstrap"; else log "down"; exit 1; fi ;;
  start-node) id="$(named_node)"; launch_node "$id"; await_node "$id"; log "node $id ready" ;;
  stop-node) id="$(named_node)"; stop_node "$id"; log "node $id stopped" ;;
  kill-node) id="$(named_node)"; stop_node "$id" KILL; log "node $id killed" ;;
  *)
    echo "usage: $0 start|stop|reset|status|start-node N|stop-node N|kill-node N [--brokers 1|3]" >&2
    exit 2
    ;;
esac
