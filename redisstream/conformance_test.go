package redisstream_test

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/mqtest"
)

// features says what Redis Streams keeps exact: a new group starts at
// the beginning of the stream, Attempt is the entry's delivery count, and
// with shards a key is handled by one member at a time, in order.
func features(sharded bool) mqtest.Features {
	return mqtest.Features{KeepsEarlyMessages: true, Attempts: mqtest.AttemptsExact, KeyOrderAcrossMembers: sharded}
}

func TestConformance(t *testing.T) {
	mqtest.Run(t, mqtest.Harness{
		// A short claim_idle so that messages handed back by a closed
		// consumer are claimed by the next member quickly.
		Open:       func(t testing.TB) *mq.Client { return open(t, "claim_idle=1s") },
		Timeout:    60 * time.Second,
		SettleTime: time.Second,
		Features:   features(false),
	})
}

func TestConformanceSharded(t *testing.T) {
	mqtest.Run(t, mqtest.Harness{
		Open:        func(t testing.TB) *mq.Client { return open(t, "claim_idle=1s&shards=4&shard_lease=900ms") },
		Timeout:     60 * time.Second,
		SettleTime:  time.Second,
		TopicPrefix: "mqtest-sharded",
		Features:    features(true),
	})
}

// TestConformanceDeployments runs the suite, unsharded and sharded, on a
// Redis Cluster, a Sentinel-managed primary and a TLS server, all started
// by the testbed. MQ_TEST_REDIS_CLUSTER_URL, MQ_TEST_REDIS_SENTINEL_URL and
// MQ_TEST_REDIS_TLS_URL point a run at deployments of your own instead
// (e.g. redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103).
func TestConformanceDeployments(t *testing.T) {
	if testing.Short() {
		t.Skip("starts more brokers; skipped with -short")
	}
	for _, d := range []struct {
		env   string
		start func(t *testing.T) string
	}{
		{"MQ_TEST_REDIS_CLUSTER_URL", func(t *testing.T) string { return testbed.RedisCluster(t).URL }},
		{"MQ_TEST_REDIS_SENTINEL_URL", func(t *testing.T) string { return testbed.RedisSentinel(t).URL }},
		{"MQ_TEST_REDIS_TLS_URL", func(t *testing.T) string {
			certs := testbed.WriteCerts(t, "mq test CA")
			b := testbed.Redis(t, testbed.WithRedisTLS(certs.Dir))
			return "rediss://" + b.TLSAddr + "/0?tls_ca=" + url.QueryEscape(certs.CAFile)
		}},
	} {
		t.Run(strings.TrimPrefix(d.env, "MQ_TEST_REDIS_"), func(t *testing.T) {
			u := os.Getenv(d.env)
			if u == "" {
				u = d.start(t)
			}
			sep := "?"
			if strings.Contains(u, "?") {
				sep = "&"
			}
			for _, params := range []string{"claim_idle=1s", "claim_idle=1s&shards=4&shard_lease=900ms"} {
				t.Run(params, func(t *testing.T) {
					mqtest.Run(t, mqtest.Harness{
						Open: func(t testing.TB) *mq.Client {
							c, err := mq.Open(context.Background(), u+sep+params)
							if err != nil {
								t.Fatal(err)
							}
							return c
						},
						TopicPrefix: "mqtest-deploy",
						Features:    features(strings.Contains(params, "shards=")),
					})
				})
			}
		})
	}
}
