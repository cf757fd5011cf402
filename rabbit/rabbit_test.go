package rabbit_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// TestBrokerRestart restarts the broker while a producer and a consumer
// run, and checks that every message whose Produce returned nil is
// consumed.
func TestBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a broker")
	}
	for _, qt := range []string{"classic", "quorum"} {
		t.Run(qt, func(t *testing.T) {
			disrupt(t, qt, func(ctx context.Context, b *testbed.Broker) error { return b.Restart(ctx) })
		})
	}
}

// TestBrokerPause freezes the broker (connections stay open, nothing
// answers) for longer than the heartbeat timeout, then thaws it.
func TestBrokerPause(t *testing.T) {
	if testing.Short() {
		t.Skip("pauses a broker")
	}
	disrupt(t, "classic", func(ctx context.Context, b *testbed.Broker) error {
		c := openT(t, b.URL)
		topic := uniqueTopic("paused")
		p := c.Producer()
		if err := p.Produce(ctx, topic, &mq.Message{}); err != nil {
			return err
		}
		if err := b.Pause(ctx); err != nil {
			return err
		}
		// Nothing answers: a Produce must fail when its context ends,
		// never report success.
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.Produce(short, topic, &mq.Message{ID: "during-pause"})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Produce to a paused broker = %v, want a deadline error", err)
		}
		time.Sleep(8 * time.Second)
		return b.Unpause(ctx)
	})
}

// disrupt runs a producer and a consumer while disruption happens to the
// broker, and checks that no confirmed message is lost.
func disrupt(t *testing.T, qt string, disruption func(context.Context, *testbed.Broker) error) {
	{
		{
			b := testbed.RabbitMQ(t)
			url := b.URL + "?queue_type=" + qt + "&reconnect_backoff=50ms&max_reconnect_backoff=1s&heartbeat=2"
			topic := uniqueTopic("restart")
			logs := &lockedBuffer{}
			cc := dialT(t, url, logs)
			var mu sync.Mutex
			seen := map[string]int{}
			consumeT(t, cc, topic, func(_ context.Context, m *mq.Message) error {
				mu.Lock()
				seen[m.ID]++
				mu.Unlock()
				return nil
			}, mq.WithGroup("g"), mq.WithConcurrency(4))

			pc := dialT(t, url, logs)
			p := pc.Producer()
			var confirmed, failed []string
			var produced atomic.Int64
			stopProducing := make(chan struct{})
			producerDone := make(chan struct{})
			go func() {
				defer close(producerDone)
				for batch := 0; ; batch++ {
					select {
					case <-stopProducing:
						return
					default:
					}
					var msgs []*mq.Message
					for i := range 10 {
						msgs = append(msgs, &mq.Message{ID: fmt.Sprintf("m-%05d-%d", batch, i), Key: fmt.Sprintf("k%d", i), Body: []byte("payload")})
					}
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					err := p.Produce(ctx, topic, msgs...)
					cancel()
					for _, m := range msgs {
						if err == nil {
							confirmed = append(confirmed, m.ID)
						} else {
							failed = append(failed, m.ID)
						}
					}
					if err != nil {
						t.Logf("Produce batch %d: %v", batch, err)
					}
					produced.Add(int64(len(msgs)))
					time.Sleep(5 * time.Millisecond)
				}
			}()
			waitFor(t, 30*time.Second, "messages before the restart", func() bool { return produced.Load() >= 300 })

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			t.Logf("disrupting the broker after %d messages", produced.Load())
			if err := disruption(ctx, b); err != nil {
				t.Fatalf("disruption: %v", err)
			}
			after := produced.Load()
			waitFor(t, 90*time.Second, "messages after the restart", func() bool { return produced.Load() >= after+300 })
			close(stopProducing)
			<-producerDone

			lost := func() []string {
				mu.Lock()
				defer mu.Unlock()
				var l []string
				for _, id := range confirmed {
					if seen[id] == 0 {
						l = append(l, id)
					}
				}
				return l
			}
			deadline := time.Now().Add(90 * time.Second)
			for len(lost()) > 0 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			mu.Lock()
			dups := 0
			for _, n := range seen {
				dups += n - 1
			}
			failedSeen := 0
			for _, id := range failed {
				if seen[id] > 0 {
					failedSeen++
				}
			}
			mu.Unlock()
			l := lost()
			t.Logf("%d confirmed, %d failed (of which %d arrived anyway), %d lost, %d duplicate deliveries",
				len(confirmed), len(failed), failedSeen, len(l), dups)
			if len(l) > 0 {
				t.Errorf("%d confirmed messages lost, first: %v", len(l), l[:min(5, len(l))])
			}
			if got := logs.String(); !strings.Contains(got, "reconnected") || strings.Contains(got, ":guest@") {
				t.Errorf("want reconnection logs without the password; got:\n%s", got)
			}
		}
	}
}

// TestShardedKeyOrder checks per-key order across two consumer instances
// of one group with shards: the first instance handles messages, then
// stops; the second takes over its shards, and no key ever goes back.
func TestShardedKeyOrder(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	url := b.URL + "?shards=4"
	topic := uniqueTopic("sharded")
	const keys, perKey = 20, 40
	var mu sync.Mutex
	last := map[string]int{}
	var broken []string
	handled := map[string]int{} // per instance
	distinct := map[string]bool{}
	handler := func(name string) mq.HandlerFunc {
		return func(hctx context.Context, m *mq.Message) error {
			var seq int
			fmt.Sscan(string(m.Body), &seq)
			mu.Lock()
			if name == "a" && handled["a"] >= 200 {
				// Instance a stalls: what it holds goes back to the broker
				// when it stops.
				mu.Unlock()
				<-hctx.Done()
				return hctx.Err()
			}
			if prev, ok := last[m.Key]; ok && seq < prev && len(broken) < 10 {
				broken = append(broken, fmt.Sprintf("key %s: #%d (instance %s) after #%d", m.Key, seq, name, prev))
			}
			last[m.Key] = seq
			handled[name]++
			distinct[m.ID] = true
			mu.Unlock()
			return nil
		}
	}
	a, bb := openT(t, url), openT(t, url)
	stopA := consumeT(t, a, topic, handler("a"), mq.WithGroup("g"), mq.WithConcurrency(8), mq.WithShutdownTimeout(100*time.Millisecond))
	consumeT(t, bb, topic, handler("b"), mq.WithGroup("g"), mq.WithConcurrency(8))

	var msgs []*mq.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("key-%02d", k), Body: []byte(fmt.Sprint(i))})
		}
	}
	p := a.Producer()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < len(msgs); i += 100 {
		if err := p.Produce(ctx, topic, msgs[i:i+100]...); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(distinct)
	}
	waitFor(t, time.Minute, "200 messages", func() bool { return count() >= 200 })
	stopA() // instance a leaves; b's waiting consumers become active
	waitFor(t, time.Minute, "every message", func() bool { return count() == len(msgs) })
	mu.Lock()
	defer mu.Unlock()
	if len(broken) > 0 {
		t.Errorf("per-key order broken across instances:\n%s", strings.Join(broken, "\n"))
	}
	t.Logf("instance a handled %d, instance b handled %d deliveries of %d messages", handled["a"], handled["b"], len(msgs))
	if handled["b"] == 0 {
		t.Errorf("instance b never took over the shards")
	}
}

func TestUnroutable(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := uniqueTopic("unroutable")

	// With unrouted=error a topic without groups refuses messages.
	strict := openT(t, b.URL+"?unrouted=error")
	err := strict.Producer().Produce(ctx, topic, &mq.Message{ID: "lonely"})
	if !errors.Is(err, rabbit.ErrUnroutable) {
		t.Errorf("Produce to a topic with no queue = %v, want ErrUnroutable", err)
	}
	if err != nil && !strings.Contains(err.Error(), "lonely") {
		t.Errorf("error %q does not name the message", err)
	}

	// Operators' topology (declare=false): the exchange exists, nothing is
	// bound to it; a batch with one good message fails as a whole.
	ops := openT(t, b.URL+"?declare=false")
	err = ops.Producer().Produce(ctx, topic, &mq.Message{ID: "a"}, &mq.Message{ID: "b"})
	if !errors.Is(err, rabbit.ErrUnroutable) {
		t.Errorf("Produce (declare=false, no binding) = %v, want ErrUnroutable", err)
	}
	// The producer's channel is still usable afterwards.
	consumeT(t, strict, topic, func(context.Context, *mq.Message) error { return nil }, mq.WithGroup("g"))
	if err := ops.Producer().Produce(ctx, topic, &mq.Message{ID: "routed"}); err != nil {
		t.Errorf("Produce once a group is bound: %v", err)
	}

	// declare=false and no exchange at all.
	err = ops.Producer().Produce(ctx, uniqueTopic("missing"), &mq.Message{})
	if !errors.Is(err, rabbit.ErrNotFound) {
		t.Errorf("Produce to a missing exchange with declare=false = %v, want ErrNotFound", err)
	}
	_, err = ops.Consumer(ctx, uniqueTopic("missing"), mq.WithGroup("g"))
	if !errors.Is(err, rabbit.ErrNotFound) {
		t.Errorf("Consumer on a missing queue with declare=false = %v, want ErrNotFound", err)
	}
	// And the connection still works after those channel errors.
	if err := ops.Producer().Produce(ctx, topic, &mq.Message{ID: "still-fine"}); err != nil {
		t.Errorf("Produce after channel errors: %v", err)
	}
}

// By default, messages produced while a topic has no group are kept in
// "<topic>.unrouted" instead of failing or vanishing.
func TestUnroutedKept(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := openT(t, b.URL)
	topic := uniqueTopic("kept")
	if err := c.Producer().Produce(ctx, topic, &mq.Message{}, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	ch := rawChannel(t, b.URL)
	waitFor(t, 10*time.Second, "two messages in the unrouted queue", func() bool {
		q, err := ch.QueueDeclarePassive(topic+".unrouted", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages == 2
	})
	// The name of the unrouted queue is not a group's (that the first
	// group gets these messages is TestUnroutedHandedToFirstGroup).
	if _, err := c.Consumer(ctx, topic, mq.WithGroup("unrouted")); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("Consumer with group \"unrouted\" = %v, want an error saying the name is reserved", err)
	}
}

// TestAttempt checks Attempt on messages the broker redelivers: exact on
// quorum queues (x-delivery-count), 2 for any redelivery on classic ones.
func TestAttempt(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	for _, tc := range []struct {
		queueType string
		want      []int
	}{
		{"quorum", []int{1, 2, 3}},
		{"classic", []int{1, 2, 2}},
	} {
		t.Run(tc.queueType, func(t *testing.T) {
			c := openT(t, b.URL+"?queue_type="+tc.queueType)
			topic := uniqueTopic("attempt")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithShutdownTimeout(10*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			defer cons.Close()
			if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "x"}); err != nil {
				t.Fatal(err)
			}
			var got []int
			for range tc.want {
				// Each round handles the message until shutdown, which
				// returns it to the broker unfinished.
				seen := make(chan int, 1)
				rctx, rcancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() {
					done <- cons.Consume(rctx, mq.HandlerFunc(func(hctx context.Context, m *mq.Message) error {
						select {
						case seen <- m.Attempt:
						default:
						}
						<-hctx.Done()
						return hctx.Err()
					}))
				}()
				select {
				case a := <-seen:
					got = append(got, a)
				case <-ctx.Done():
					t.Fatalf("no delivery; attempts so far %v", got)
				}
				rcancel()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("attempts = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDeadLetter routes a message that keeps failing to the broker's
// dead-letter exchange, with x-death, instead of retrying it forever.
func TestDeadLetter(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	dlx := uniqueTopic("dlx")
	c := openT(t, b.URL+"?dead_letter_exchange="+dlx)
	conn := c.Conn().(*rabbit.Conn)
	topic := uniqueTopic("dl")
	var attempts atomic.Int32
	h := mq.Chain(mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		attempts.Add(1)
		if m.ID == "poison" {
			return errors.New("cannot handle this")
		}
		return nil
	}), conn.DeadLetter(3))
	consumeT(t, c, topic, h.Handle, mq.WithGroup("g"), mq.WithNackBackoff(10*time.Millisecond, 10*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "poison", Key: "k", Body: []byte("bad")}, &mq.Message{ID: "fine", Key: "k"}); err != nil {
		t.Fatal(err)
	}

	ch := rawChannel(t, b.URL)
	var d amqp.Delivery
	var err error
	waitFor(t, 30*time.Second, "the dead letter", func() bool {
		var ok bool
		d, ok, err = ch.Get(dlx, true)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	if d.MessageId != "poison" || string(d.Body) != "bad" {
		t.Errorf("dead letter is %q %q, want poison", d.MessageId, d.Body)
	}
	if _, ok := d.Headers["x-death"]; !ok {
		t.Errorf("dead letter has no x-death header: %v", d.Headers)
	}
	if n := attempts.Load(); n != 4 { // poison 3 times, fine once
		t.Errorf("handler ran %d times, want 4", n)
	}
	if n, err := conn.Lag(ctx, topic, "g"); err != nil || n != 0 {
		t.Errorf("Lag = %d, %v; want 0", n, err)
	}
}

func TestLag(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL+"?shards=3")
	topic := uniqueTopic("lag")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var msgs []*mq.Message
	for i := range 25 {
		msgs = append(msgs, &mq.Message{Key: fmt.Sprint(i)})
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	conn := c.Conn().(*rabbit.Conn)
	if got := conn.QueueNames(topic, "g"); len(got) != 3 {
		t.Fatalf("QueueNames = %v, want 3 shards", got)
	}
	waitFor(t, 10*time.Second, "lag 25", func() bool {
		n, err := conn.Lag(ctx, topic, "g")
		return err == nil && n == 25
	})
	if _, err := conn.Lag(ctx, topic, "nogroup"); !errors.Is(err, rabbit.ErrNotFound) {
		t.Errorf("Lag of a missing group = %v, want ErrNotFound", err)
	}
}

func TestMessageTooLarge(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL+"?max_message_size=1000")
	err := c.Producer().Produce(context.Background(), uniqueTopic("big"), &mq.Message{Body: make([]byte, 1001)})
	if !errors.Is(err, mq.ErrMessageTooLarge) {
		t.Errorf("Produce over max_message_size = %v, want ErrMessageTooLarge", err)
	}
	if got := c.Conn().(mq.Sizer).MaxMessageBytes(); got != 1000 {
		t.Errorf("MaxMessageBytes = %d, want 1000", got)
	}
	err = c.Producer().Produce(context.Background(), uniqueTopic("hdr"), &mq.Message{Headers: map[string]string{"x-mq-key": "v"}})
	if !errors.Is(err, mq.ErrInvalidMessage) {
		t.Errorf("Produce with a reserved header = %v, want ErrInvalidMessage", err)
	}
}

// TestCloseStopsGoroutines checks that closing a client (concurrently,
// and again) leaves no goroutine of this package running.
func TestCloseStopsGoroutines(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, b.URL+"?shards=2")
	if err != nil {
		t.Fatal(err)
	}
	topic := uniqueTopic("goroutines")
	got := make(chan struct{}, 10)
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(context.Background(), mq.HandlerFunc(func(context.Context, *mq.Message) error {
			got <- struct{}{}
			return nil
		}))
	}()
	if err := c.Producer().Produce(ctx, topic, &mq.Message{Key: "a"}, &mq.Message{Key: "b"}); err != nil {
		t.Fatal(err)
	}
	<-got
	<-got
	// Close concurrently from several goroutines, twice.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Close() }()
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Consume: %v", err)
	}
	waitFor(t, 10*time.Second, "no goroutine of package rabbit", func() bool {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		return !strings.Contains(string(buf[:n]), "mq/rabbit.(*")
	})
	if err := c.Producer().Produce(ctx, topic, &mq.Message{}); !errors.Is(err, mq.ErrClosed) {
		t.Errorf("Produce after Close = %v, want ErrClosed", err)
	}
}

// TestResourceAlarm: while a memory alarm blocks publishers, Produce
// fails when its context ends, instead of hanging or succeeding; once the
// alarm clears, it works again. It uses a broker of its own, as the alarm
// would stall other tests.
func TestResourceAlarm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
	}
	b := testbed.RabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := openT(t, b.URL)
	topic := uniqueTopic("alarm")
	p := c.Producer()
	consumeT(t, c, topic, func(context.Context, *mq.Message) error { return nil }, mq.WithGroup("g"))
	if err := p.Produce(ctx, topic, &mq.Message{}); err != nil {
		t.Fatal(err)
	}
	if err := rabbitmqctl(ctx, b, "set_vm_memory_high_watermark", "0"); err != nil {
		t.Fatalf("cannot raise a memory alarm with rabbitmqctl: %v", err)
	}

	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	var err error
	for i := 0; err == nil && i < 50; i++ { // the alarm takes a moment
		err = p.Produce(short, topic, &mq.Message{Body: make([]byte, 64<<10)})
	}
	if err == nil {
		t.Fatal("Produce kept succeeding under a memory alarm")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Produce under a memory alarm = %v, want a context deadline error", err)
	}
	t.Logf("under the alarm: %v", err)
	if err := rabbitmqctl(ctx, b, "set_vm_memory_high_watermark", "0.4"); err != nil {
		t.Fatalf("clearing the alarm: %v", err)
	}
	if err := p.Produce(ctx, topic, &mq.Message{}); err != nil {
		t.Errorf("Produce after the alarm cleared: %v", err)
	}
}
