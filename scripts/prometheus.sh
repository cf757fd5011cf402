#!/usr/bin/env bash
# scripts/prometheus.sh: a Prometheus server for the metrics tests.
#
# Takes the prometheus binary from Debian's prometheus package without
# installing it: `apt-get download` fetches the .deb (after one
# `apt-get update` when the package lists do not know it yet) and
# `dpkg -x` unpacks it into the cache, under its version:
#   $MQ_TESTBED_CACHE/prometheus-<version>/usr/bin/prometheus
# A warm machine skips both. Nothing is installed, no service is started.
# Adds
#   export MQ_TEST_PROMETHEUS=<that path>
# to .testbed.env, where the test harness finds it (testbed.Prometheus),
# and prints the same line. Run after scripts/testbed.sh (which rewrites
# .testbed.env).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MQ_TESTBED_CACHE:-/var/cache/mqkit}
log() { printf '[%s] prometheus: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

# The version apt would take; the cached copy of it is reused.
candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/{print $2; exit}'; }
VERSION=$(candidate)
if [[ -z $VERSION || $VERSION == "(none)" ]]; then
  command -v apt-get >/dev/null || die "no apt-get: set MQ_TEST_PROMETHEUS to a prometheus binary (2.x)"
  [[ $(id -u) == 0 ]] || die "the package lists do not know prometheus and apt-get update needs root"
  log "apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
  VERSION=$(candidate)
  [[ -n $VERSION && $VERSION != "(none)" ]] || die "no prometheus package in the configured Debian suites"
fi
DIR=$CACHE/prometheus-${VERSION//[:~]/_}
BIN=$DIR/usr/bin/prometheus

if [[ ! -x $BIN ]] || ! "$BIN" --version >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  TMP=$(mktemp -d "$CACHE/prometheus-dl.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  log "downloading prometheus $VERSION (Debian package, not installed)"
  SANDBOX=(); [[ $(id -u) == 0 ]] && SANDBOX=(-o APT::Sandbox::User=root) # root downloads into a dir _apt cannot write
  if ! (cd "$TMP" && apt-get download -qq "${SANDBOX[@]}" "prometheus=$VERSION" >&2); then
    [[ $(id -u) == 0 ]] || die "apt-get download failed"
    log "apt-get update, then download again"
    apt-get update -qq >&2 || die "apt-get update failed"
    (cd "$TMP" && apt-get download -qq "${SANDBOX[@]}" "prometheus=$VERSION" >&2) || die "apt-get download prometheus=$VERSION failed"
  fi
  rm -rf "$DIR"
  dpkg -x "$TMP"/prometheus_*.deb "$TMP/root"
  mkdir -p "$DIR/usr/bin"
  mv "$TMP/root/usr/bin/prometheus" "$BIN"
  "$BIN" --version >/dev/null 2>&1 || die "$BIN does not run"
  # Older unpacked versions are dropped.
  find "$CACHE" -maxdepth 1 -name 'prometheus-*' -type d ! -name "$(basename "$DIR")" -exec rm -rf {} +
fi
"$BIN" --version 2>&1 | head -1 >&2
ENV_FILE=$ROOT/.testbed.env
touch "$ENV_FILE"
grep -v '^export MQ_TEST_PROMETHEUS=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
echo "export MQ_TEST_PROMETHEUS=$BIN" >>"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "export MQ_TEST_PROMETHEUS=$BIN"
