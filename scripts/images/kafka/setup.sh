#!/bin/bash
# Runs inside the image's chroot after the packages are installed.
set -euo pipefail
java -cp '/opt/kafka/libs/*' kafka.Kafka --version

# Pre-format the default data directory, so that a container start skips
# the StorageTool JVM.
KAFKA_FORMAT_ONLY=1 /opt/kafka/start.sh >/dev/null

# Class-data sharing archive (/opt/kafka/kafka.jsa): start a broker once,
# on loopback ports (the chroot shares the host's network), and let the JVM
# record the classes it loaded when it exits. Without it the image works,
# only slower to start.
train() {
  local port=$1 log=/tmp/kafka-train.log pid i
  rm -rf /tmp/kafka-train
  KAFKA_PORT=$port KAFKA_CONTROLLER_PORT=$((port + 1)) KAFKA_DATA_DIR=/tmp/kafka-train \
    KAFKA_CONFIG_FILE=/tmp/kafka-train.properties KAFKA_NO_CDS=1 \
    KAFKA_OPTS="-XX:ArchiveClassesAtExit=/opt/kafka/kafka.jsa" \
    /opt/kafka/start.sh >"$log" 2>&1 &
  pid=$!
  for ((i = 0; i < 600; i++)); do
    if grep -q 'Kafka Server started' "$log"; then
      kill -TERM "$pid"
      wait "$pid" || true
      rm -rf /tmp/kafka-train /tmp/kafka-train.properties
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  tail -20 "$log"
  rm -f /opt/kafka/kafka.jsa
  return 1
}
for attempt in 1 2 3; do
  if train $((20000 + RANDOM % 20000 * 2)); then
    ls -la /opt/kafka/kafka.jsa
    break
  fi
  echo "training start $attempt failed"
done
rm -f /tmp/kafka-train.log /tmp/kafka-server.properties
