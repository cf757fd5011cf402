package mq_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/mqkit/mq"
)

// A sink that writes many rows per call (a bulk insert) consumes in
// batches; a row it refuses comes back alone, the others are acknowledged.
func ExampleBatch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := mq.Open(ctx, "mem://?group=warehouse")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// Concurrency bounds the batch: the consumer hands Batch that many at once.
	rows, err := c.Consumer(ctx, "rows", mq.WithConcurrency(100))
	if err != nil {
		log.Fatal(err)
	}
	var msgs []*mq.Message
	for i := range 5 {
		msgs = append(msgs, &mq.Message{ID: fmt.Sprint("row-", i), Key: fmt.Sprint("k", i)})
	}
	if err := c.Producer().Produce(ctx, "rows", msgs...); err != nil {
		log.Fatal(err)
	}

	inserted := 0
	bulkInsert := mq.BatchHandlerFunc(func(ctx context.Context, ms []*mq.Message) error {
		errs := make([]error, len(ms))
		for i, m := range ms {
			if m.ID == "row-3" && m.Attempt == 1 {
				errs[i] = errors.New("deadlock, try again")
				continue
			}
			inserted++
		}
		if inserted == 5 {
			cancel()
		}
		return &mq.BatchError{Errs: errs}
	})
	h := mq.Batch(bulkInsert, mq.BatchOptions{Size: 100, Linger: 10 * time.Millisecond})
	if err := rows.Consume(ctx, h); err != nil {
		log.Fatal(err)
	}
	fmt.Println("inserted", inserted)
	// Output: inserted 5
}
