#!/bin/bash
# Runs inside the image's chroot after the packages are installed.
set -euo pipefail
# The consistent-hash exchange (x-consistent-hash), for key-sharded topologies.
rabbitmq-plugins --offline enable rabbitmq_consistent_hash_exchange
cat /etc/rabbitmq/enabled_plugins
# The broker rewrites this file when RABBITMQ_ENABLED_PLUGINS is set (the
# harness sets it, so that the official image gets the plugin as well).
chown rabbitmq:rabbitmq /etc/rabbitmq/enabled_plugins

# Boot time: the broker scans every plugin it can find (feature flags,
# configuration schemas), so drop the plugins the tests never enable (the
# management UI, MQTT, STOMP, streams, federation, shovel, ...) and the
# libraries only they use. AMQP 0-9-1 and the consistent-hash exchange stay.
cd /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins
for d in rabbitmq_* amqp10_client-* amqp_client-* accept-* base64url-* cowboy-* cowlib-* \
  eetcd-* gun-* jose-* prometheus-* quantile_estimator-*; do
  case $d in
    rabbitmq_prelaunch-* | rabbitmq_consistent_hash_exchange-*) ;;
    *) rm -rf "$d" ;;
  esac
done
ls
