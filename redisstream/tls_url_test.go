package redisstream

import (
	"errors"
	"net/url"
	"testing"

	"github.com/mqkit/mq"
)

func TestParseURLTLSParameters(t *testing.T) {
	for _, raw := range []string{
		"redis://h:6379/0?tls_ca=/x.pem",               // TLS material without rediss
		"rediss://h:6379/0?tls_cert=/c.pem",            // cert without key
		"rediss://h:6379/0?tls_ca=/does/not/exist.pem", // unreadable CA
	} {
		u, _ := url.Parse(raw)
		if _, _, err := parseURL(u); !errors.Is(err, mq.ErrInvalidURL) {
			t.Errorf("parseURL(%q) = %v, want ErrInvalidURL", raw, err)
		}
	}
	u, _ := url.Parse("rediss://h:6379/0?tls_server_name=redis.internal")
	spec, _, err := parseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if tc := spec.tlsConfig(); tc == nil || tc.ServerName != "redis.internal" {
		t.Errorf("tls_server_name not applied: %+v", tc)
	}
}
