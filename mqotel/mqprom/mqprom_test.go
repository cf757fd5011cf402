package mqprom_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/mqotel"
	"github.com/mqkit/mq/mqotel/mqprom"
)

// The handler serves every instrument of mqotel under the names the
// package documentation gives, with the topic, group and outcome labels.
func TestScrape(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exp, err := mqprom.New(mqprom.WithServiceName("mqprom-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Shutdown(context.Background())
	inst := mqotel.New(mqotel.WithMeterProvider(exp.MeterProvider()), mqotel.WithSystem("inmemory"))
	c, err := mq.Open(ctx, "mem://?group=billing", inst.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cons, err := c.Consumer(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	if err := c.Producer().Produce(ctx, "orders", &mq.Message{Body: []byte("1")}, &mq.Message{Body: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	stop := inst.ObserveLag(c, "orders", "billing")
	defer stop()
	cctx, stopConsume := context.WithCancel(ctx)
	handled := make(chan struct{}, 2)
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error { handled <- struct{}{}; return nil }))
	}()
	<-handled
	<-handled
	stopConsume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(exp)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`messaging_client_sent_messages_total{messaging_destination_name="orders",messaging_operation_name="send",messaging_operation_type="send",messaging_system="inmemory"`,
		`messaging_client_operation_duration_seconds_bucket{`,
		`messaging_client_consumed_messages_total{messaging_consumer_group_name="billing",messaging_destination_name="orders",messaging_operation_name="process",messaging_operation_type="process",messaging_system="inmemory",mqkit_outcome="ack"`,
		`messaging_process_duration_seconds_bucket{`,
		`messaging_process_duration_seconds_count{`,
		`mqkit_process_active{messaging_consumer_group_name="billing",messaging_destination_name="orders",messaging_system="inmemory"`,
		`mqkit_consumer_lag{messaging_consumer_group_name="billing",messaging_destination_name="orders",messaging_destination_partition_id="",messaging_system="inmemory"`,
		`mqkit_consumer_unacked{`,
		`mqkit_consumer_oldest_age_seconds{`,
		`target_info{`,
		`service_name="mqprom-test"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
}
