#!/usr/bin/env bash
# scripts/kbench.sh: start a fresh Kafka for benchmarks, container "kbench".
#
# One KRaft node from the test bed's image ($MQ_TEST_KAFKA_IMAGE, from
# .testbed.env: run scripts/testbed.sh first), host networking, listening
# on 127.0.0.1:19092 (controller 127.0.0.1:19093), 512 MB heap, one
# partition per auto-created topic, no initial rebalance delay: the broker
# BENCHMARKS.md calls kbench. A previous kbench is removed first, with
# its data: a day of bench runs filled the disk once, so start it afresh
# for each series. Use it as kafka://127.0.0.1:19092; remove it with
# `docker rm -f kbench`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${MQ_TEST_KAFKA_IMAGE:-}" && -f .testbed.env ]]; then
	# shellcheck disable=SC1091
	source .testbed.env
fi
if [[ -z "${MQ_TEST_KAFKA_IMAGE:-}" ]]; then
	echo "kbench: MQ_TEST_KAFKA_IMAGE is not set: run scripts/testbed.sh, then source .testbed.env" >&2
	exit 1
fi
docker rm -f kbench >/dev/null 2>&1 || true
docker run -d --name kbench --network host \
	-e CLUSTER_ID=bXFraXQtdGVzdGJlZC0wMQ \
	-e KAFKA_NODE_ID=1 \
	-e KAFKA_PROCESS_ROLES=broker,controller \
	-e KAFKA_LISTENERS=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093 \
	-e KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://127.0.0.1:19092 \
	-e KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER \
	-e KAFKA_CONTROLLER_QUORUM_VOTERS=1@127.0.0.1:19093 \
	-e KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT \
	-e KAFKA_INTER_BROKER_LISTENER_NAME=PLAINTEXT \
	-e KAFKA_AUTO_CREATE_TOPICS_ENABLE=true \
	-e KAFKA_NUM_PARTITIONS=1 \
	-e KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1 \
	-e KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS=1 \
	-e KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1 \
	-e KAFKA_TRANSACTION_STATE_LOG_MIN_ISR=1 \
	-e KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0 \
	-e "KAFKA_HEAP_OPTS=-Xmx512m -Xms128m" \
	"$MQ_TEST_KAFKA_IMAGE" >/dev/null
for i in $(seq 60); do
	if (echo >/dev/tcp/127.0.0.1/19092) 2>/dev/null; then
		echo "kbench: kafka://127.0.0.1:19092 up after ${i} s"
		exit 0
	fi
	sleep 1
done
echo "kbench: Kafka did not listen on 127.0.0.1:19092 within 60 s; see docker logs kbench" >&2
exit 1
