package mqprom_test

import (
	"context"
	"log"
	"net/http"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/mqotel"
	"github.com/mqkit/mq/mqotel/mqprom"
)

// A service's metrics on /metrics for Prometheus to scrape.
func ExampleNew() {
	ctx := context.Background()
	exp, err := mqprom.New(mqprom.WithServiceName("billing"))
	if err != nil {
		log.Fatal(err)
	}
	defer exp.Shutdown(ctx)
	inst := mqotel.New(mqotel.WithMeterProvider(exp.MeterProvider()), mqotel.WithSystem("inmemory"))
	c, err := mq.Open(ctx, "mem://?group=billing", inst.Options()...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	defer inst.ObserveLag(c, "orders", "billing")()

	mux := http.NewServeMux()
	mux.Handle("/metrics", exp)
	srv := &http.Server{Addr: "127.0.0.1:9464", Handler: mux}
	_ = srv // go srv.ListenAndServe(), then consume
}
