#!/bin/bash
# Runs inside the image's chroot after the packages are installed.
set -euo pipefail
# Check that the broker's main classes load, then pre-format the default data
# directory so that a container start skips the StorageTool JVM.
java -cp '/opt/kafka/libs/*' kafka.Kafka --version
KAFKA_FORMAT_ONLY=1 /opt/kafka/start.sh
rm -f /tmp/kafka-server.properties
