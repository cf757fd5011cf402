package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/redisstream"
)

// Open a client from a URL, produce, and consume with a group.
func Example() {
	ctx := context.Background()
	c, err := mq.Open(ctx, "redis://127.0.0.1:6379/0?claim_idle=10s&group=billing")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if err := c.Producer().Produce(ctx, "orders", &mq.Message{Key: "order-17", Body: []byte(`{"total":42}`)}); err != nil {
		log.Fatal(err)
	}
	cons, err := c.Consumer(ctx, "orders", mq.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}
	err = cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		fmt.Printf("%s: %s\n", m.Key, m.Body)
		return nil
	}))
	if err != nil {
		log.Fatal(err)
	}
}

// Use your own go-redis client (here a Cluster client) with NewConn.
func ExampleNewConn() {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}})
	conn, err := redisstream.NewConn(rdb, redisstream.Config{Shards: 16})
	if err != nil {
		log.Fatal(err)
	}
	c := mq.NewClient(conn, mq.WithGroup("billing"))
	defer c.Close()
	// c.Producer(), c.Consumer(ctx, "orders") ...
}

// Read a group's backlog.
func ExampleConn_Lag() {
	ctx := context.Background()
	c, err := mq.Open(ctx, "redis://127.0.0.1:6379/0")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	pending, lag, err := c.Conn().(*redisstream.Conn).Lag(ctx, "orders", "billing")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d pending, %d not yet delivered\n", pending, lag)
}

// A malformed parameter fails Open before connecting; the password is
// never shown.
func Example_invalidURL() {
	_, err := mq.Open(context.Background(), "redis://app:s3cret@127.0.0.1:6379/0?claim_idle=soon")
	fmt.Println(errors.Is(err, mq.ErrInvalidURL))
	fmt.Println(err)
	// Output:
	// true
	// mq: open redis://app:xxxxx@127.0.0.1:6379/0?claim_idle=soon: mq: invalid URL: claim_idle="soon": want a duration such as 250ms or 5s
}
