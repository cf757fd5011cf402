#!/usr/bin/env bash
# scripts/interop.sh: the foreign clients of the interop tests.
#
# Makes a Python virtualenv with integration/interop/requirements.txt
# (confluent-kafka, pika, redis-py from PyPI), kept in the cache under a
# hash of that file, so a warm machine skips the install, and adds
#   export MQ_TEST_PYTHON=<venv>/bin/python
# to .testbed.env, where the test harness finds it (testbed.Python).
# Run after scripts/testbed.sh (which rewrites .testbed.env).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MQ_TESTBED_CACHE:-/var/cache/mqkit}
REQ=$ROOT/integration/interop/requirements.txt
HASH=$(sha256sum "$REQ" | cut -c1-12)
VENV=$CACHE/pyvenv-$HASH
log() { printf '[%s] interop: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import confluent_kafka, pika, redis' 2>/dev/null; then
  log "making $VENV from $REQ"
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >"$CACHE/pyvenv-$HASH.log" 2>&1 ||
    { cat "$CACHE/pyvenv-$HASH.log" >&2; rm -rf "$VENV"; exit 1; }
  # Older venvs of other recipes are dropped.
  find "$CACHE" -maxdepth 1 -name 'pyvenv-*' -type d ! -name "pyvenv-$HASH" -exec rm -rf {} +
fi
"$VENV/bin/python" -c 'import confluent_kafka, pika, redis; print("interop clients:", "confluent-kafka", confluent_kafka.__version__, "pika", pika.__version__, "redis-py", redis.__version__)' >&2
ENV_FILE=$ROOT/.testbed.env
touch "$ENV_FILE"
grep -v '^export MQ_TEST_PYTHON=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
echo "export MQ_TEST_PYTHON=$VENV/bin/python" >>"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "export MQ_TEST_PYTHON=$VENV/bin/python"
