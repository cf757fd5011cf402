package rabbit_test

import (
	"context"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/mqtest"
	_ "github.com/mqkit/mq/rabbit"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// openT opens a client to url and closes it when the test ends.
func openT(t testing.TB, url string, opts ...mq.Option) *mq.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := mq.Open(ctx, url, opts...)
	if err != nil {
		t.Fatalf("mq.Open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	for _, tc := range []struct {
		name, params string
		features     mqtest.Features
	}{
		{"classic", "queue_type=classic", mqtest.Features{Attempts: mqtest.AttemptsRedelivered, KeepsEarlyMessages: true}},
		{"quorum", "queue_type=quorum", mqtest.Features{Attempts: mqtest.AttemptsExact, KeepsEarlyMessages: true}},
		{"sharded", "queue_type=classic&shards=4", mqtest.Features{Attempts: mqtest.AttemptsRedelivered, KeyOrderAcrossMembers: true, KeepsEarlyMessages: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mqtest.Run(t, mqtest.Harness{
				Open:        func(t testing.TB) *mq.Client { return openT(t, b.URL+"?"+tc.params) },
				Timeout:     30 * time.Second,
				TopicPrefix: "mqtest-" + tc.name,
				Features:    tc.features,
			})
		})
	}
}
