package redisstream_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/mqtest"
)

func TestConformance(t *testing.T) {
	mqtest.Run(t, mqtest.Harness{
		// A short claim_idle so that messages handed back by a closed
		// consumer are claimed by the next member quickly.
		Open:       func(t testing.TB) *mq.Client { return open(t, "claim_idle=1s") },
		Timeout:    60 * time.Second,
		SettleTime: time.Second,
	})
}

func TestConformanceSharded(t *testing.T) {
	mqtest.Run(t, mqtest.Harness{
		Open:        func(t testing.TB) *mq.Client { return open(t, "claim_idle=1s&shards=4&shard_lease=900ms") },
		Timeout:     60 * time.Second,
		SettleTime:  time.Second,
		TopicPrefix: "mqtest-sharded",
	})
}

// TestConformanceDeployments runs the suite, unsharded and sharded,
// against a Redis Cluster named by MQ_TEST_REDIS_CLUSTER_URL (e.g.
// redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103) and a
// Sentinel-managed primary named by MQ_TEST_REDIS_SENTINEL_URL (e.g.
// redis+sentinel://127.0.0.1:26379?master=mymaster) and a TLS server named
// by MQ_TEST_REDIS_TLS_URL (e.g. rediss://:PASSWORD@127.0.0.1:6380/0). The
// testbed starts none of these, so each is skipped without its variable.
func TestConformanceDeployments(t *testing.T) {
	for _, env := range []string{"MQ_TEST_REDIS_CLUSTER_URL", "MQ_TEST_REDIS_SENTINEL_URL", "MQ_TEST_REDIS_TLS_URL"} {
		t.Run(env, func(t *testing.T) {
			u := os.Getenv(env)
			if u == "" {
				t.Skip(env + " is not set")
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
					})
				})
			}
		})
	}
}
