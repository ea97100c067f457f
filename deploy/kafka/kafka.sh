#!/usr/bin/env bash
# Fetch and run a single-node Apache Kafka (KRaft) on loopback, for development and tests.
#
#   kafka.sh fetch                 download Kafka + runtime deps from Maven Central into the cache
#   kafka.sh start <dir> <port>    configure/format (first time) and start a broker in <dir>
#   kafka.sh stop <dir>            stop the broker started in <dir>
#   kafka.sh classpath             print the classpath glob (after fetch)
#
# Environment:
#   SPOTZEE_KAFKA_VERSION   Kafka version (default 4.4.0)
#   SPOTZEE_KAFKA_CACHE     cache root (default $HOME/.cache/spotzee/kafka); jars go to <root>/<version>/libs
#   SPOTZEE_KAFKA_HEAP      JVM heap options (default "-Xms256m -Xmx512m")
#   SPOTZEE_KAFKA_START_TIMEOUT  seconds to wait for the broker (default 90)
#   SPOTZEE_KAFKA_EXTRA_CONFIG   extra server.properties lines (newline-separated), appended last so they win,
#                           e.g. "broker.session.timeout.ms=4000\nbroker.heartbeat.interval.ms=1000"
#   JAVA_HOME               optional; otherwise `java` from PATH
#
# Everything binds to 127.0.0.1 only. Needs: java (17+), mvn (3.6.3+), python3 (free-port lookup).
set -euo pipefail

KAFKA_VERSION="${SPOTZEE_KAFKA_VERSION:-4.4.0}"
SCALA_VERSION="2.13"
# Kafka 4.x logs through slf4j 1.7 -> needs the log4j2 binding for slf4j 1.x; keep it on Kafka's log4j2 version.
LOG4J_VERSION="${SPOTZEE_KAFKA_LOG4J_VERSION:-2.25.5}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
CACHE_ROOT="${SPOTZEE_KAFKA_CACHE:-${HOME:-/tmp}/.cache/spotzee/kafka}"
VERSION_DIR="$CACHE_ROOT/$KAFKA_VERSION"
LIBS="$VERSION_DIR/libs"
START_TIMEOUT="${SPOTZEE_KAFKA_START_TIMEOUT:-90}"
HEAP_OPTS="${SPOTZEE_KAFKA_HEAP:--Xms256m -Xmx512m}"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
else
    JAVA="java"
fi

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

have_libs() {
    [[ -f "$LIBS/.complete" ]] && compgen -G "$LIBS/kafka_${SCALA_VERSION}-${KAFKA_VERSION}.jar" >/dev/null
}

cmd_fetch() {
    if have_libs; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (needed to fetch Kafka from Maven Central)"
    mkdir -p "$VERSION_DIR"
    local work
    work="$(mktemp -d "$VERSION_DIR/fetch.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>spotzee.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- Broker (kafka.Kafka) and kafka.tools.StorageTool; pulls kafka-server, kafka-storage, kafka-raft,
         kafka-metadata, the coordinators, log4j-core/api, slf4j-api 1.7 ... -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${SCALA_VERSION}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <!-- slf4j 1.x -> log4j2 binding, otherwise the broker's own logging goes to a NOP logger. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
EOF
    echo "kafka.sh: fetching kafka_${SCALA_VERSION}:${KAFKA_VERSION} and dependencies with Maven..." >&2
    mvn -B -q -Dstyle.color=never -f "$work/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" ||
        die "maven could not fetch kafka_${SCALA_VERSION}:${KAFKA_VERSION}"
    [[ -f "$work/libs/kafka_${SCALA_VERSION}-${KAFKA_VERSION}.jar" ]] || die "fetch produced no kafka jar"
    touch "$work/libs/.complete"
    # Atomic publish; a concurrent fetch that got there first wins.
    if [[ -e "$LIBS" ]] && ! have_libs; then
        rm -rf "$LIBS"
    fi
    if ! mv -T "$work/libs" "$LIBS" 2>/dev/null; then
        have_libs || die "could not install jars into $LIBS"
    fi
    rm -rf "$work"
    trap - EXIT
    echo "kafka.sh: jars in $LIBS" >&2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

random_cluster_id() {
    # Kafka Uuid string form: url-safe base64 of 16 random bytes, no padding, not starting with '-'.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    printf '%s\n' "$id"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PID: running (not a zombie) and is our broker.
pid_alive() {
    local pid="$1" state
    [[ -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# Alive and not a zombie, whatever it runs: right after the fork the child may not have exec'd
# java yet (its cmdline is still this script's), so pid_alive would call a starting broker dead.
pid_running() {
    local pid="$1" state
    [[ -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

read_pid() {
    local f="$1/kafka.pid"
    [[ -f "$f" ]] && tr -dc '0-9' <"$f"
}

# java_cmd ARGS...: fills the JAVA_CMD array (so a background start gets the java PID itself in $!).
java_cmd() {
    local heap
    read -r -a heap <<<"$HEAP_OPTS"
    JAVA_CMD=("$JAVA" "${heap[@]}" -Djava.awt.headless=true -Dlog4j2.configurationFile="$DIR/log4j2.properties"
        -Dkafka.logs.dir="$DIR" -cp "$LIBS/*" "$@")
}

write_config() {
    local port="$1" cport="$2"
    cat >"$DIR/server.properties" <<EOF
# Generated by deploy/kafka/kafka.sh - single-node KRaft broker+controller on loopback.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:${cport}
log.dirs=${DIR}/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    if [[ -n "${SPOTZEE_KAFKA_EXTRA_CONFIG:-}" ]]; then
        printf '%b\n' "$SPOTZEE_KAFKA_EXTRA_CONFIG" >>"$DIR/server.properties"
    fi
    cat >"$DIR/log4j2.properties" <<'EOF'
# stdout is redirected to kafka.log by kafka.sh
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
}

cmd_start() {
    [[ $# -eq 2 ]] || usage
    local port="$2" cport pid
    [[ "$port" =~ ^[0-9]+$ ]] || die "bad port: $port"
    mkdir -p "$1"
    DIR="$(cd "$1" && pwd)"
    have_libs || cmd_fetch
    command -v "$JAVA" >/dev/null || die "java not found"

    pid="$(read_pid "$DIR" || true)"
    if [[ -n "$pid" ]] && pid_alive "$pid"; then
        die "a broker is already running in $DIR (pid $pid)"
    fi
    port_open "$port" && die "port 127.0.0.1:$port is already in use"

    # Reuse the controller port of an existing (formatted) node: its voter endpoint is in the metadata log.
    cport=""
    if [[ -f "$DIR/server.properties" ]]; then
        cport="$(sed -n 's/^controller\.quorum\.bootstrap\.servers=127\.0\.0\.1:\([0-9]*\)$/\1/p' "$DIR/server.properties")"
    fi
    while [[ -z "$cport" || "$cport" == "$port" ]] || port_open "$cport"; do
        cport="$(free_port)"
    done
    write_config "$port" "$cport"

    if [[ ! -f "$DIR/data/meta.properties" ]]; then
        local cid
        cid="$(random_cluster_id)"
        java_cmd kafka.tools.StorageTool format --standalone -t "$cid" -c "$DIR/server.properties"
        "${JAVA_CMD[@]}" >"$DIR/format.log" 2>&1 || {
            cat "$DIR/format.log" >&2
            die "storage format failed"
        }
    fi

    local t0=$SECONDS
    # No inherited stdio: the broker outlives this script and never holds a caller's pipes open.
    if [[ -f "$DIR/kafka.log" ]]; then
        mv -f "$DIR/kafka.log" "$DIR/kafka.log.1"
    fi
    java_cmd kafka.Kafka "$DIR/server.properties"
    "${JAVA_CMD[@]}" </dev/null >"$DIR/kafka.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/kafka.pid"

    while :; do
        if ! kill -0 "$pid" 2>/dev/null || ! pid_running "$pid"; then
            tail -n 60 "$DIR/kafka.log" >&2 || true
            die "broker exited during startup (see $DIR/kafka.log)"
        fi
        if port_open "$port" && grep -q 'Kafka Server started' "$DIR/kafka.log" 2>/dev/null; then
            break
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            tail -n 60 "$DIR/kafka.log" >&2 || true
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$DIR/kafka.pid"
            die "broker did not come up on 127.0.0.1:$port within ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    echo "kafka.sh: broker pid $pid on 127.0.0.1:$port (controller $cport), up in $((SECONDS - t0))s" >&2
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir="$1" pid i
    pid="$(read_pid "$dir" || true)"
    if [[ -z "$pid" ]]; then
        return 0
    fi
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            pid_alive "$pid" || break
            sleep 0.2
        done
        if pid_alive "$pid"; then
            echo "kafka.sh: broker $pid ignored SIGTERM for 30s, killing" >&2
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                pid_alive "$pid" || break
                sleep 0.1
            done
        fi
    fi
    rm -f "$dir/kafka.pid"
}

[[ $# -ge 1 ]] || usage
sub="$1"
shift
case "$sub" in
fetch) cmd_fetch ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
classpath)
    have_libs || die "not fetched; run: $0 fetch"
    echo "$LIBS/*"
    ;;
*) usage ;;
esac
