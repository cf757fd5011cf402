#!/bin/bash
# Entry point of the mq-kafka test image: a single-node Apache Kafka broker in
# KRaft combined mode (broker and controller in one JVM).
#
# Meant to run with host networking, so that the advertised listener is the
# very address a test dials. Settings come from the environment:
#
#   KAFKA_PORT             client (PLAINTEXT) listener port        default 9092
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port          default 9093
#   KAFKA_BIND_HOST        address both listeners bind to          default 127.0.0.1
#   KAFKA_ADVERTISED_HOST  host advertised to clients              default 127.0.0.1
#   KAFKA_HEAP_OPTS        JVM heap flags                          default -Xmx512m -Xms128m
#   KAFKA_OPTS             more JVM flags
#   KAFKA_EXTRA_PROPERTIES raw server.properties lines, appended last
#   KAFKA_NO_CDS           set: do not use the class-data sharing archive
#   CLUSTER_ID             KRaft cluster id (22 chars, base64url of 16 bytes)
#
# Like the official apache/kafka image, every other KAFKA_<NAME> variable
# becomes a broker property: strip KAFKA_, lower-case, then "___" -> "-",
# "__" -> "_", "_" -> "." (KAFKA_NUM_PARTITIONS=3 -> num.partitions=3,
# KAFKA_LISTENERS=... -> listeners=...). So the harness can configure this
# image and apache/kafka with the same variables.
#
# The data directory is pre-formatted in the image (start-up then skips the
# StorageTool JVM); it is formatted here only when missing or when CLUSTER_ID
# names another cluster. A restarted container keeps its data.
set -euo pipefail

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-9093}
bind=${KAFKA_BIND_HOST:-127.0.0.1}
adv=${KAFKA_ADVERTISED_HOST:-127.0.0.1}
cluster_id=${CLUSTER_ID:-bXFraXQtdGVzdGJlZC0wMQ}
heap=${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}
conf=${KAFKA_CONFIG_FILE:-/tmp/kafka-server.properties}

declare -A props=()
order=()
set_prop() {
  [[ -v "props[$1]" ]] || order+=("$1")
  props[$1]=$2
}

set_prop process.roles broker,controller
set_prop node.id 1
set_prop controller.quorum.voters "1@${adv}:${cport}"
set_prop listeners "PLAINTEXT://${bind}:${port},CONTROLLER://${bind}:${cport}"
set_prop advertised.listeners "PLAINTEXT://${adv}:${port}"
set_prop controller.listener.names CONTROLLER
set_prop inter.broker.listener.name PLAINTEXT
set_prop listener.security.protocol.map CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
set_prop log.dirs "${KAFKA_DATA_DIR:-/var/lib/kafka/data}"
set_prop num.partitions 1
set_prop default.replication.factor 1
set_prop min.insync.replicas 1
set_prop auto.create.topics.enable true
set_prop delete.topic.enable true
set_prop offsets.topic.replication.factor 1
set_prop offsets.topic.num.partitions 1
set_prop transaction.state.log.replication.factor 1
set_prop transaction.state.log.min.isr 1
set_prop transaction.state.log.num.partitions 1
set_prop group.initial.rebalance.delay.ms 0
set_prop log.segment.bytes 67108864

# Variables of this script and of the JVM, never broker properties.
declare -A skip=()
for name in KAFKA_NO_CDS KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_BIND_HOST KAFKA_ADVERTISED_HOST \
  KAFKA_HOME KAFKA_DATA_DIR KAFKA_CONFIG_FILE KAFKA_EXTRA_PROPERTIES KAFKA_FORMAT_ONLY \
  KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_LOG4J_OPTS KAFKA_JMX_OPTS \
  KAFKA_GC_LOG_OPTS KAFKA_VERSION KAFKA_LOG4J_ROOT_LOGLEVEL KAFKA_LOG4J_LOGGERS \
  KAFKA_TOOLS_LOG4J_LOGLEVEL KAFKA_JMX_HOSTNAME; do
  skip[$name]=1
done
while IFS= read -r name; do
  [[ -v "skip[$name]" ]] && continue
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/-}
  key=${key//__/$'\x01'}
  key=${key//_/.}
  key=${key//$'\x01'/_}
  set_prop "$key" "${!name}"
done < <(compgen -e | grep '^KAFKA_' || true)

{
  for k in "${order[@]}"; do printf '%s=%s\n' "$k" "${props[$k]}"; done
  if [[ -n ${KAFKA_EXTRA_PROPERTIES:-} ]]; then printf '%s\n' "$KAFKA_EXTRA_PROPERTIES"; fi
} >"$conf"

data=${props[log.dirs]%%,*}
jvm=(-server -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError
     -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
     "-Dlog4j.configuration=file:${KAFKA_HOME}/config/log4j.properties")
cp=(-cp "${KAFKA_HOME}/libs/*")
# Class-data sharing: the image's archive of the classes a broker loads
# (recorded by a training start when the image was built) saves about 40%
# of the start-up time. Unusable archives are ignored by the JVM.
cds=()
if [[ -z ${KAFKA_NO_CDS:-} && -f ${KAFKA_HOME}/kafka.jsa ]]; then
  cds=("-XX:SharedArchiveFile=${KAFKA_HOME}/kafka.jsa")
fi

if [[ -f ${data}/meta.properties ]] && ! grep -qx "cluster.id=${cluster_id}" "${data}/meta.properties"; then
  echo "start.sh: ${data} belongs to another cluster; formatting it anew for ${cluster_id}"
  rm -rf "${data:?}"/*
fi
if [[ ! -f ${data}/meta.properties ]]; then
  mkdir -p "$data"
  echo "start.sh: formatting ${data} for cluster ${cluster_id}"
  # shellcheck disable=SC2086
  java $heap "${jvm[@]}" "${cp[@]}" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$conf" --ignore-formatted
fi
# KAFKA_FORMAT_ONLY=1: format and stop (used when the image is built).
if [[ -n ${KAFKA_FORMAT_ONLY:-} ]]; then exit 0; fi

echo "start.sh: starting Kafka, listeners ${props[listeners]}, advertised ${props[advertised.listeners]}"
# shellcheck disable=SC2086
exec java $heap ${KAFKA_OPTS:-} "${jvm[@]}" "${cds[@]}" "${cp[@]}" kafka.Kafka "$conf"
