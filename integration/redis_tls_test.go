package integration_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestRedisTLS: rediss:// against a real Redis TLS port with certificates
// made by the test; a client trusting another CA gets a clear error.
func TestRedisTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers")
	}
	certs := testbed.WriteCerts(t, "mq test CA")
	other := testbed.WriteCerts(t, "some other CA")
	b := testbed.Redis(t, testbed.WithRedisTLS(certs.Dir))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	roundTrip(ctx, t, "rediss://"+b.TLSAddr+"/0?tls_ca="+certs.CAFile)
	c, err := mq.Open(ctx, "rediss://"+b.TLSAddr+"/0?tls_ca="+other.CAFile)
	if err == nil {
		_ = c.Close()
		t.Fatal("a client trusting another CA connected")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA error does not mention the certificate: %v", err)
	}
	t.Logf("wrong CA: %v", err)
}
