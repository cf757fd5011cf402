package rabbit_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/rabbit"
)

func ExampleParseURL() {
	cfg, err := rabbit.ParseURL("amqp://app:secret@rabbit:5672/orders?queue_type=quorum&shards=4&heartbeat=5")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg) // the password is redacted
	fmt.Println(cfg.QueueType, cfg.Shards)

	_, err = rabbit.ParseURL("amqp://app:secret@rabbit/?queue-type=quorum")
	fmt.Println(err)
	// Output:
	// rabbit.Config{URL: amqp://app:xxxxx@rabbit:5672/orders?heartbeat=5, QueueType: quorum, Shards: 4}
	// quorum 4
	// mq: invalid URL "amqp://app:xxxxx@rabbit/?queue-type=quorum": unknown amqp:// parameter "queue-type" (known: ack_delay, auth_mechanism, cacertfile, certfile, channel_max, confirm_window, connection_timeout, dead_letter_exchange, declare, delivery_limit, exchange_type, heartbeat, keyfile, max_message_size, max_reconnect_backoff, prefetch, queue_type, reconnect_backoff, reconnect_timeout, server_name_indication, shards, unrouted)
}

// A service producing and consuming through RabbitMQ. (Not run: it needs
// a broker.)
func Example() {
	ctx := context.Background()
	c, err := mq.Open(ctx, "amqp://guest:guest@127.0.0.1:5672/?queue_type=quorum&dead_letter_exchange=orders.dead")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if err := c.Producer().Produce(ctx, "orders", &mq.Message{Key: "customer-42", Body: []byte(`{"total":12}`)}); err != nil {
		log.Fatal(err) // not confirmed by the broker: safe to produce again
	}

	cons, err := c.Consumer(ctx, "orders", mq.WithGroup("billing"), mq.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}
	defer cons.Close()
	conn := c.Conn().(*rabbit.Conn)
	h := mq.Chain(mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		fmt.Println("order", m.ID, "attempt", m.Attempt)
		return nil
	}), conn.DeadLetter(5)) // after 5 failed attempts, to orders.dead
	runCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := cons.Consume(runCtx, h); err != nil {
		log.Fatal(err)
	}
}
