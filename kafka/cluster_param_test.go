package kafka

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

// TestMinInsyncReplicasParam: min_insync_replicas=N becomes the
// min.insync.replicas of created topics, next to max.message.bytes;
// without it created topics get no such entry (the broker's default).
func TestMinInsyncReplicasParam(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  map[string]string
	}{
		{"", nil},
		{"min_insync_replicas=2", map[string]string{"min.insync.replicas": "2"}},
		{"replication=3&min_insync_replicas=3", map[string]string{"min.insync.replicas": "3"}},
		{"min_insync_replicas=2&message_max_bytes=5000", map[string]string{"min.insync.replicas": "2", "max.message.bytes": "6024"}},
		{"message_max_bytes=5000", map[string]string{"max.message.bytes": "6024"}},
	} {
		u, err := url.Parse("kafka://k1,k2,k3/?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseURL(u)
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", tc.query, err)
		}
		if _, err := c.sarama(); err != nil {
			t.Fatalf("%q: sarama config: %v", tc.query, err)
		}
		got := map[string]string{}
		for k, v := range c.topicConfig() {
			got[k] = *v
		}
		if tc.want == nil {
			if c.topicConfig() != nil || c.MinInsyncReplicas != 0 {
				t.Errorf("%q: topic config %v, MinInsyncReplicas %d; want none (the broker's defaults)", tc.query, got, c.MinInsyncReplicas)
			}
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("%q: topic config %v, want %v", tc.query, got, tc.want)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%q: topic config %s=%q, want %q", tc.query, k, got[k], v)
			}
		}
	}
}

// TestMinInsyncReplicasBad: a value that is not a whole number above 0,
// or more than the replication factor asked for, is an invalid URL naming
// the parameter; a Config with such values is refused by NewConn's
// configuration step.
func TestMinInsyncReplicasBad(t *testing.T) {
	for _, q := range []string{
		"min_insync_replicas=0",
		"min_insync_replicas=-1",
		"min_insync_replicas=two",
		"min_insync_replicas=",
		"min_insync_replicas=40000",
		"replication=2&min_insync_replicas=3",
	} {
		u, err := url.Parse("kafka://k1/?" + q)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseURL(u)
		if !errors.Is(err, mq.ErrInvalidURL) || !strings.Contains(err.Error(), "min_insync_replicas") {
			t.Errorf("ParseURL(%q) = %v, want an error wrapping mq.ErrInvalidURL naming min_insync_replicas", q, err)
		}
	}
	for _, c := range []Config{
		{Brokers: []string{"k1:9092"}, MinInsyncReplicas: -1},
		{Brokers: []string{"k1:9092"}, MinInsyncReplicas: 3, ReplicationFactor: 2},
	} {
		if _, err := c.sarama(); err == nil || !strings.Contains(err.Error(), "MinInsyncReplicas") {
			t.Errorf("Config{MinInsyncReplicas: %d, ReplicationFactor: %d}: sarama config error %v, want one naming MinInsyncReplicas",
				c.MinInsyncReplicas, c.ReplicationFactor, err)
		}
	}
}

// TestRequestTimeout: sarama's read and write timeouts follow
// request_timeout, and by default exceed the longest answer a healthy
// broker may take (acks timeout, session timeout, a JoinGroup held for
// the drain) by 5s; the dial timeout defaults to the documented 10s.
func TestRequestTimeout(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  time.Duration
	}{
		{"", 24 * time.Second}, // 15s drain + 10s/3 heartbeat + 5s, rounded up
		{"session_timeout=6s&drain_timeout=5s", 15 * time.Second},
		{"session_timeout=30s", 35 * time.Second},
		{"drain_timeout=1m", 69 * time.Second},
		{"request_timeout=7s", 7 * time.Second},
	} {
		u, err := url.Parse("kafka://k1/?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseURL(u)
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", tc.query, err)
		}
		sc, err := c.sarama()
		if err != nil {
			t.Fatal(err)
		}
		if sc.Net.ReadTimeout != tc.want || sc.Net.WriteTimeout != tc.want || sc.Net.DialTimeout != 10*time.Second {
			t.Errorf("%q: read timeout %s, write %s, dial %s; want %s, %s, 10s", tc.query, sc.Net.ReadTimeout, sc.Net.WriteTimeout, sc.Net.DialTimeout, tc.want, tc.want)
		}
	}
	for _, q := range []string{"request_timeout=500ms", "request_timeout=0", "request_timeout=soon"} {
		u, _ := url.Parse("kafka://k1/?" + q)
		if _, err := ParseURL(u); !errors.Is(err, mq.ErrInvalidURL) || !strings.Contains(err.Error(), "request_timeout") {
			t.Errorf("ParseURL(%q) = %v, want an invalid URL naming request_timeout", q, err)
		}
	}
}
