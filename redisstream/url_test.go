package redisstream

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url   string
		check func(t *testing.T, s clientSpec, c Config)
	}{
		{"redis://127.0.0.1:6379/0", func(t *testing.T, s clientSpec, c Config) {
			if s.simple == nil || s.simple.Addr != "127.0.0.1:6379" || s.simple.DB != 0 || s.simple.TLSConfig != nil {
				t.Errorf("simple = %+v", s.simple)
			}
		}},
		{"redis://", func(t *testing.T, s clientSpec, c Config) {
			if s.simple == nil || s.simple.Addr != "localhost:6379" {
				t.Errorf("simple = %+v", s.simple)
			}
		}},
		{"redis://h/3", func(t *testing.T, s clientSpec, c Config) {
			if s.simple.Addr != "h:6379" || s.simple.DB != 3 {
				t.Errorf("addr %q db %d", s.simple.Addr, s.simple.DB)
			}
		}},
		{"redis://[::1]:7000/1", func(t *testing.T, s clientSpec, c Config) {
			if s.simple.Addr != "[::1]:7000" || s.simple.DB != 1 {
				t.Errorf("addr %q db %d", s.simple.Addr, s.simple.DB)
			}
		}},
		{"rediss://user:s3cret@h:6380/2?dial_timeout=3s&pool_size=7", func(t *testing.T, s clientSpec, c Config) {
			o := s.simple
			if o.TLSConfig == nil || o.TLSConfig.ServerName != "h" {
				t.Errorf("TLS config = %+v", o.TLSConfig)
			}
			if o.Username != "user" || o.Password != "s3cret" || o.DialTimeout != 3*time.Second || o.PoolSize != 7 || o.DB != 2 {
				t.Errorf("options = %+v", o)
			}
		}},
		{"redis://h?claim_idle=5s&block=250ms&maxlen=1000&shards=8&shard_lease=3s&start=latest", func(t *testing.T, s clientSpec, c Config) {
			want := Config{ClaimIdle: 5 * time.Second, Block: 250 * time.Millisecond, MaxLen: 1000, Shards: 8, ShardLease: 3 * time.Second, StartLatest: true}
			if c != want {
				t.Errorf("config = %+v, want %+v", c, want)
			}
		}},
		{"redis://h?wait_replicas=2&wait_timeout=250ms", func(t *testing.T, s clientSpec, c Config) {
			if c.WaitReplicas != 2 || c.WaitTimeout != 250*time.Millisecond {
				t.Errorf("WaitReplicas %d, WaitTimeout %v", c.WaitReplicas, c.WaitTimeout)
			}
		}},
		{"redis+cluster://a,b?wait_replicas=1", func(t *testing.T, s clientSpec, c Config) {
			if c.WaitReplicas != 1 || c.WaitTimeout != 0 {
				t.Errorf("WaitReplicas %d, WaitTimeout %v (the default is set by NewConn)", c.WaitReplicas, c.WaitTimeout)
			}
		}},
		{"redis://h?max_age=24h", func(t *testing.T, s clientSpec, c Config) {
			if c.MaxAge != 24*time.Hour {
				t.Errorf("MaxAge = %v", c.MaxAge)
			}
		}},
		{"redis+cluster://a:7000,b:7001,c:7002", func(t *testing.T, s clientSpec, c Config) {
			if s.cluster == nil || strings.Join(s.cluster.Addrs, " ") != "a:7000 b:7001 c:7002" || s.cluster.TLSConfig != nil {
				t.Errorf("cluster = %+v", s.cluster)
			}
		}},
		{"redis+cluster://a,b", func(t *testing.T, s clientSpec, c Config) {
			if s.cluster == nil || strings.Join(s.cluster.Addrs, " ") != "a:6379 b:6379" {
				t.Errorf("cluster = %+v", s.cluster)
			}
		}},
		{"rediss+cluster://u:pw@a:7000,b:7001?read_timeout=2s", func(t *testing.T, s clientSpec, c Config) {
			o := s.cluster
			if o == nil || o.TLSConfig == nil || o.Password != "pw" || o.Username != "u" || o.ReadTimeout != 2*time.Second {
				t.Errorf("cluster = %+v", o)
			}
		}},
		{"redis+sentinel://:pw@s1,s2:26380/4?master=mymaster", func(t *testing.T, s clientSpec, c Config) {
			o := s.failover
			if o == nil || o.MasterName != "mymaster" || strings.Join(o.SentinelAddrs, " ") != "s1:26379 s2:26380" || o.DB != 4 {
				t.Fatalf("failover = %+v", o)
			}
			if o.Password != "pw" || o.SentinelPassword != "" {
				t.Errorf("password %q sentinel password %q: want the user information for the data nodes only", o.Password, o.SentinelPassword)
			}
		}},
		{"rediss+sentinel://u:pw@s1?master=m&sentinel_auth=true", func(t *testing.T, s clientSpec, c Config) {
			o := s.failover
			if o.TLSConfig == nil || o.SentinelUsername != "u" || o.SentinelPassword != "pw" || o.Password != "pw" {
				t.Errorf("failover = %+v", o)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			s, c, err := parseURL(u)
			if err != nil {
				t.Fatalf("parseURL: %v", err)
			}
			tc.check(t, s, c)
		})
	}
}

func TestParseURLErrors(t *testing.T) {
	const secret = "hunter2-secret"
	tests := []struct {
		url  string
		want string // in the error text
	}{
		{"redis://u:" + secret + "@h?bogus=1", "bogus"},
		{"redis://u:" + secret + "@h?claim_idle=soon", "claim_idle"},
		{"redis://u:" + secret + "@h?claim_idle=0s", "claim_idle"},
		{"redis://u:" + secret + "@h?block=-1s", "block"},
		{"redis://u:" + secret + "@h?maxlen=0", "maxlen"},
		{"redis://u:" + secret + "@h?maxlen=x", "maxlen"},
		{"redis://u:" + secret + "@h?maxlen=10&max_age=1h", "exclude"},
		{"redis://u:" + secret + "@h?shards=0", "shards"},
		{"redis://u:" + secret + "@h?shards=5000", "shards"},
		{"redis://u:" + secret + "@h?start=middle", "start"},
		{"redis://u:" + secret + "@h?wait_replicas=-1", "wait_replicas"},
		{"redis://u:" + secret + "@h?wait_replicas=one", "wait_replicas"},
		{"redis://u:" + secret + "@h?wait_replicas=1&wait_timeout=soon", "wait_timeout"},
		{"redis://u:" + secret + "@h?wait_timeout=1s", "needs wait_replicas"},
		{"redis://u:" + secret + "@h?claim_idle=1s&claim_idle=2s", "2 times"},
		{"redis://u:" + secret + "@h?password=" + secret, "password"},
		{"redis://u:" + secret + "@h?addr=h2:6379", "addr"},
		{"redis://u:" + secret + "@h?master=m", "master"},
		{"redis://u:" + secret + "@h1,h2", "redis+cluster"},
		{"redis://u:" + secret + "@h/x", "database"},
		{"redis://u:" + secret + "@h/1/2", "path"},
		{"redis://u:" + secret + "@h?dial_timeout=abc", "dial_timeout"},
		{"redis://u:" + secret + "@h#frag", "fragment"},
		{"redis+cluster://u:" + secret + "@a,,b", "empty address"},
		{"redis+cluster://u:" + secret + "@a,b/3", "database 0"},
		{"redis+sentinel://u:" + secret + "@s1,s2", "master=NAME"},
		{"redis+sentinel://u:" + secret + "@s1?master=m&master_name=n", "master_name"},
		{"redis+sentinel://u:" + secret + "@s1?master=m&sentinel_auth=maybe", "sentinel_auth"},
		{"redis://u:" + secret + "@::1", "brackets"},
	}
	for _, tc := range tests {
		t.Run(strings.ReplaceAll(tc.url, secret, "xxx"), func(t *testing.T) {
			u, err := url.Parse(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = parseURL(u)
			if err == nil {
				t.Fatal("parseURL succeeded, want an error")
			}
			if !errors.Is(err, mq.ErrInvalidURL) {
				t.Errorf("error %v does not wrap mq.ErrInvalidURL", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the password: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// TestOpenNeverShowsPassword goes through mq.Open: bad parameters and an
// unreachable server.
func TestOpenNeverShowsPassword(t *testing.T) {
	const secret = "hunter2-secret"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, raw := range []string{
		"redis://u:" + secret + "@127.0.0.1:1/0?bogus=1",
		"redis://u:" + secret + "@127.0.0.1:1/0?dial_timeout=200ms",
		"redis+sentinel://u:" + secret + "@127.0.0.1:1?master=m&dial_timeout=200ms&max_retries=-1",
		"rediss://:" + secret + "@127.0.0.1:1/0?dial_timeout=200ms&max_retries=-1",
	} {
		c, err := mq.Open(ctx, raw)
		if err == nil {
			_ = c.Close()
			t.Errorf("Open(%s) succeeded", strings.ReplaceAll(raw, secret, "xxx"))
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestRedactErr(t *testing.T) {
	base := errors.New("dial pw123 failed")
	err := redactErr(base, "pw123")
	if strings.Contains(err.Error(), "pw123") || !errors.Is(err, base) {
		t.Errorf("redactErr = %v (is base: %v)", err, errors.Is(err, base))
	}
	if errors.Unwrap(err) != nil {
		t.Error("a redacted error must not unwrap to the text holding the password")
	}
	if redactErr(base, "") != base || redactErr(base, "other") != base {
		t.Error("redactErr changed an error without the password")
	}
}
