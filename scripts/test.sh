#!/usr/bin/env bash
# scripts/test.sh: the project's whole test run (CI runs it through .ci/run).
#
#   1. Go modules (go mod download), go vet; gofmt and staticcheck (a
#      pinned version, installed from the module proxy when missing).
#   2. Test bed: scripts/testbed.sh makes sure Docker runs and the local
#      broker images exist (building them from Debian packages on a cold
#      machine), then its environment (MQ_TEST_*_IMAGE, TESTCONTAINERS_*) is
#      exported.
#   3. Interop clients: scripts/interop.sh makes a Python virtualenv with
#      confluent-kafka, pika and redis-py (cached by a hash of
#      integration/interop/requirements.txt) for the foreign-client tests.
#   4. Prometheus: scripts/prometheus.sh unpacks Debian's prometheus
#      package into the cache (no full apt install) for the scrape test.
#   5. go test -race -count=1 ./... : unit tests and the tests against real
#      Redis, RabbitMQ and Kafka containers, single nodes and clusters
#      (integration/cluster). Fault tests write their tables to
#      $MQ_REPORT_DIR, printed at the end.
#
# With CI=true a broker that cannot be started fails its tests (outside CI
# they are skipped). Prints the time of each stage; exits non-zero on any
# failure. Extra arguments go to `go test` (e.g. -run Kafka, -v).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T0=$(date +%s)
STAGES=()
stage_start=0
stage_name=""
log() { printf '[%s +%4ss] test.sh: %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - T0))" "$*"; }
begin() { stage_name=$1; stage_start=$(date +%s); log "== $1"; }
end() { STAGES+=("$(printf '%-28s %5ss' "$stage_name" "$(($(date +%s) - stage_start))")"); stage_name=""; }
summary() {
  local rc=$?
  if [[ -n $stage_name ]]; then
    STAGES+=("$(printf '%-28s %5ss  FAILED' "$stage_name" "$(($(date +%s) - stage_start))")")
  fi
  echo
  log "stage timings:"
  printf '    %s\n' "${STAGES[@]}"
  log "total $(($(date +%s) - T0)) s, exit code $rc"
}
trap summary EXIT

begin "go mod download + vet"
go version
go mod download
go vet ./...
end

begin "static checks (gofmt, staticcheck)"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [[ -n $unformatted ]]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
# Pinned, built from the module proxy into GOPATH/bin (cached there).
STATICCHECK_VERSION=v0.8.2
SC=$(go env GOPATH)/bin/staticcheck
if ! "$SC" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi
"$SC" ./...
end

begin "test tools (kcat)"
# kcat is a Kafka client nobody here wrote: the Kafka interop test uses it.
if ! command -v kcat >/dev/null; then
  if [[ $(id -u) == 0 ]]; then
    (apt-get install -y -q kcat || { apt-get update -q && apt-get install -y -q kcat; }) >/tmp/mq-apt-kcat.log 2>&1 ||
      { cat /tmp/mq-apt-kcat.log; exit 1; }
  else
    log "kcat missing and not root: the kcat interop test will skip (fail under CI)"
  fi
fi
end

begin "test bed (docker + images)"
bash scripts/testbed.sh >/dev/null
# shellcheck disable=SC1091
source .testbed.env
env | grep -E '^(MQ_TEST_|TESTCONTAINERS_|CI=)' | sort | sed 's/^/    /'
end

begin "interop clients (python venv)"
# Clients nobody here wrote, from PyPI: the interop tests drive them.
bash scripts/interop.sh >/dev/null
# shellcheck disable=SC1091
source .testbed.env
end

begin "prometheus (Debian package binary, for the metrics test)"
bash scripts/prometheus.sh >/dev/null
# shellcheck disable=SC1091
source .testbed.env
end

begin "go test -race ./..."
# Fault tests append their measured rows (confirmed / lost / duplicates /
# stall / order per fault) here; printed after the run, pass or fail.
MQ_REPORT_DIR=$(mktemp -d)
export MQ_REPORT_DIR
print_reports() {
  local f
  for f in "$MQ_REPORT_DIR"/*.md; do
    [[ -e $f ]] || continue
    echo; log "report $(basename "$f"):"; cat "$f"
  done
}
trap 'rc=$?; print_reports; (exit $rc); summary' EXIT
go test -race -count=1 -timeout 30m "$@" ./...
end
