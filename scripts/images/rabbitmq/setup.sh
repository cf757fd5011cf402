#!/bin/bash
# Runs inside the image's chroot after the packages are installed.
set -euo pipefail
# The consistent-hash exchange is used by the rabbit adapter's key sharding.
rabbitmq-plugins --offline enable rabbitmq_consistent_hash_exchange
cat /etc/rabbitmq/enabled_plugins
