package redisstream_test

import (
	"context"
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	_ "github.com/mqkit/mq/redisstream"
)

// One Redis container serves every test of this binary.
func TestMain(m *testing.M) { testbed.Main(m) }

// redisURL returns the URL of the test binary's Redis, with params (a
// query string without "?") added.
func redisURL(t testing.TB, params string) string {
	t.Helper()
	u := testbed.SharedRedis(t).URL
	if params != "" {
		u += "?" + params
	}
	return u
}

// open opens a client to the test Redis and closes it after the test.
func open(t testing.TB, params string, opts ...mq.Option) *mq.Client {
	t.Helper()
	c, err := mq.Open(context.Background(), redisURL(t, params), opts...)
	if err != nil {
		t.Fatalf("mq.Open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
