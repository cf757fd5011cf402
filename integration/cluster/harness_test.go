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
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/internal/faultload"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/kafka"
	_ "github.com/mqkit/mq/rabbit"
	_ "github.com/mqkit/mq/redisstream"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// loadOptions shape the workload (faultload.Options).
type loadOptions = faultload.Options

// startLoad starts producing to topic and consuming it in one group on two
// clients of rawURL, its rows going to the report table clusters.md.
func startLoad(t *testing.T, rawURL, topic string, opts loadOptions) *faultload.Load {
	t.Helper()
	return faultload.Start(t, rawURL, topic, clustersTable(opts))
}

// startLoadOn is startLoad on clients of the caller's.
func startLoadOn(t *testing.T, prod, cons *mq.Client, topic string, opts loadOptions) *faultload.Load {
	t.Helper()
	return faultload.StartOn(t, prod, cons, topic, clustersTable(opts))
}

// clustersTable sends the rows of opts to clusters.md unless they name a
// table.
func clustersTable(opts loadOptions) loadOptions {
	if opts.Report == "" {
		opts.Report = "clusters"
	}
	return opts
}
