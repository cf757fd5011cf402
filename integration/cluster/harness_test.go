// Package cluster_test runs mqkit against replicated brokers (3-node Kafka,
// a 3-node RabbitMQ cluster with quorum queues, Redis Cluster with
// replicas, Redis Sentinel) started by the test bed, and fails their nodes
// under steady load (package faultload): every confirmed message ID is in
// a ledger, and each fault reports confirmed, handled, lost, duplicates,
// how long producing and consuming stalled, and key-order violations.
//
// One cluster runs at a time: the tests of this package are not parallel.
// With MQ_REPORT_DIR set, the rows are appended to
// $MQ_REPORT_DIR/clusters.md (scripts/test.sh prints that file at the end).
package cluster_test

import (
	"context"
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/internal/faultload"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/kafka"
	_ "github.com/mqkit/mq/rabbit"
	_ "github.com/mqkit/mq/redisstream"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// loadOptions shape the workload (faultload.Options); the report table is
// clusters.md.
type loadOptions = faultload.Options

// faultRow is one fault's line of the table.
type faultRow = faultload.Row

// load is the steady workload of one test.
type load struct{ *faultload.Load }

// startLoad starts producing to topic and consuming it in one group on two
// clients of rawURL.
func startLoad(t *testing.T, rawURL, topic string, opts loadOptions) *load {
	t.Helper()
	if opts.Report == "" {
		opts.Report = "clusters"
	}
	return &load{faultload.Start(t, rawURL, topic, opts)}
}

// startLoadOn is startLoad on clients of the caller's.
func startLoadOn(t *testing.T, prod, cons *mq.Client, topic string, opts loadOptions) *load {
	t.Helper()
	if opts.Report == "" {
		opts.Report = "clusters"
	}
	return &load{faultload.StartOn(t, prod, cons, topic, opts)}
}

// fault injects a fault with fn as a new phase (faultload.Load.Fault).
func (w *load) fault(t *testing.T, name string, fn func(ctx context.Context) error) {
	t.Helper()
	w.Fault(t, name, fn)
}

// finish drains and reports (faultload.Load.Finish).
func (w *load) finish(t *testing.T, broker, setting string, expectNoLoss bool) []faultRow {
	t.Helper()
	return w.Finish(t, broker, setting, expectNoLoss)
}
