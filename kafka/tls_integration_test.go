package kafka_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestKafkaTLS produces and consumes over a real broker's TLS listener with
// certificates made by the test, and checks that a client trusting another
// CA fails with a clear certificate error.
func TestKafkaTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	certs := testbed.WriteCerts(t, "mq test CA")
	caFile := certs.CAFile
	otherFile := testbed.WriteCerts(t, "some other CA").CAFile

	b := testbed.Kafka(t, testbed.WithKafkaTLS(certs.Dir))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c, err := mq.Open(ctx, "kafka://"+b.TLSAddr+"/?create_topics=true&tls_ca="+caFile)
	if err != nil {
		t.Fatalf("open over TLS: %v\n%s", err, b.Logs(ctx))
	}
	defer c.Close()
	topic := "tls-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "over-tls", Body: []byte("secret order")}); err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	var got string
	_ = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		got = m.ID + ":" + string(m.Body)
		stop()
		return nil
	}))
	if got != "over-tls:secret order" {
		t.Fatalf("consumed %q over TLS", got)
	}

	_, err = mq.Open(ctx, "kafka://"+b.TLSAddr+"/?dial_timeout=5s&tls_ca="+otherFile)
	if err == nil {
		t.Fatal("a client trusting another CA connected")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA error does not mention the certificate: %v", err)
	}
	t.Logf("wrong CA: %v", err)
}
