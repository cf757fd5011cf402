package redisstream

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestWaitConfig: NewConn fills in WaitTimeout from the client's read
// timeout and refuses one the WAIT reply could not be read within, and
// refuses clients it cannot route a WAIT for.
func TestWaitConfig(t *testing.T) {
	simple := func(rt time.Duration) redis.UniversalClient {
		return redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ReadTimeout: rt})
	}
	cluster := func(rt time.Duration) redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, ReadTimeout: rt})
	}
	for _, tc := range []struct {
		name    string
		client  redis.UniversalClient
		cfg     Config
		want    time.Duration // WaitTimeout after NewConn
		wantErr string
	}{
		{"off", simple(time.Second), Config{}, 0, ""},
		{"default read timeout", simple(0), Config{WaitReplicas: 1}, time.Second, ""},
		{"short read timeout halves the default", simple(time.Second), Config{WaitReplicas: 1}, 500 * time.Millisecond, ""},
		{"cluster", cluster(0), Config{WaitReplicas: 2}, time.Second, ""},
		{"no read deadline", simple(-1), Config{WaitReplicas: 1, WaitTimeout: time.Minute}, time.Minute, ""},
		{"explicit", simple(3 * time.Second), Config{WaitReplicas: 1, WaitTimeout: 2 * time.Second}, 2 * time.Second, ""},
		{"too long for the read timeout", simple(time.Second), Config{WaitReplicas: 1, WaitTimeout: 900 * time.Millisecond}, 0, "read timeout"},
		{"negative", simple(0), Config{WaitReplicas: -1}, 0, "negative"},
		{"ring", redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}}), Config{WaitReplicas: 1}, 0, "*redis.Ring"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.client.Close()
			c, err := NewConn(tc.client, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewConn error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Config().WaitTimeout; got != tc.want {
				t.Errorf("WaitTimeout = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRedirection parses MOVED and ASK replies, including the form that
// names no host, and nothing else.
func TestRedirection(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want redirect
		ok   bool
	}{
		{reply("MOVED 3999 127.0.0.1:6381"), redirect{addr: "127.0.0.1:6381"}, true},
		{reply("ASK 3999 10.0.0.2:7000"), redirect{addr: "10.0.0.2:7000", ask: true}, true},
		{reply("MOVED 3999 :6381"), redirect{addr: "127.0.3.2:6381"}, true},
		{errors.Join(errors.New("message 1"), reply("ASK 1 [::1]:7000")), redirect{addr: "[::1]:7000", ask: true}, true},
		{reply("ERR MOVED is not a command"), redirect{}, false},
		{reply("CLUSTERDOWN The cluster is down"), redirect{}, false},
		{errors.New("MOVED 3999 127.0.0.1:6381"), redirect{}, false}, // not a reply of Redis's
		{nil, redirect{}, false},
	} {
		got, ok := redirection(tc.err, "127.0.3.2:6379")
		if ok != tc.ok || got != tc.want {
			t.Errorf("redirection(%v) = %+v, %v; want %+v, %v", tc.err, got, ok, tc.want, tc.ok)
		}
	}
}
