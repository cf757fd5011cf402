package rabbit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// closeAllConnections makes the broker close every client connection
// (CONNECTION_FORCED), as an operator or a failing node would, and returns
// when a connection of the test's own saw its close: about when every
// other client learns it too. It closes the connections of every test
// using b, so tests calling it must not run in parallel.
func closeAllConnections(t *testing.T, b *testbed.Broker) time.Time {
	t.Helper()
	raw, err := amqp.Dial(b.URL)
	if err != nil {
		t.Fatalf("sentinel connection: %v", err)
	}
	defer raw.Close()
	closed := raw.NotifyClose(make(chan *amqp.Error, 1))
	closedAt := make(chan time.Time, 1)
	go func() { // ends when raw closes, at the latest by the deferred Close
		<-closed
		closedAt <- time.Now()
	}()
	if err := rabbitmqctl(context.Background(), b, "close_all_connections", "mqkit test: the connection dies"); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-closedAt:
		return at
	case <-time.After(10 * time.Second):
		t.Fatal("rabbitmqctl close_all_connections returned, but the sentinel connection is still open")
		return time.Time{}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitClosed waits up to timeout for ch to close and returns when it did.
func waitClosed(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) time.Time {
	t.Helper()
	select {
	case <-ch:
		return time.Now()
	case <-time.After(timeout):
		t.Fatalf("%s: Lost not closed within %v", what, timeout)
		return time.Time{}
	}
}

// TestLost checks the driver's side of mq.Delivery.Lost: deliveries of one
// channel share one Lost channel, which closes as soon as the channel dies
// (broker-side close), when the subscription recycles the channel, and at
// Close; a lost delivery cannot be acknowledged, its Nack only forgets
// it, and the broker delivers it again on the next channel.
func TestLost(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := rabbit.Dial(ctx, rabbit.Config{URL: b.URL, ReconnectBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	topic := uniqueTopic("lost")
	sub, err := conn.Subscribe(ctx, topic, "g", mq.SubscribeOptions{MaxInFlight: 10, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var msgs []*mq.Message
	for i := range 4 {
		msgs = append(msgs, &mq.Message{ID: fmt.Sprintf("m%d", i)})
	}
	if err := conn.Send(ctx, topic, msgs); err != nil {
		t.Fatal(err)
	}
	receive := func(n int) []mq.Delivery {
		t.Helper()
		var got []mq.Delivery
		for len(got) < n {
			ds, err := sub.Receive(ctx, n-len(got))
			if err != nil {
				t.Fatalf("Receive: %v", err)
			}
			got = append(got, ds...)
		}
		return got
	}

	// 1. The broker closes the connection.
	ds := receive(4)
	lost := ds[0].Lost()
	if lost == nil {
		t.Fatal("Lost is nil")
	}
	for _, d := range ds {
		if d.Lost() != lost {
			t.Fatal("deliveries of one channel return different Lost channels")
		}
	}
	if isClosed(lost) {
		t.Fatal("Lost closed on a live channel")
	}
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatalf("Ack on a live channel: %v", err)
	}
	lostAt := make(chan time.Time, 1)
	go func() { // ends when lost closes, or when the test's context ends
		select {
		case <-lost:
			lostAt <- time.Now()
		case <-ctx.Done():
		}
	}()
	killed := closeAllConnections(t, b)
	select {
	case at := <-lostAt:
		t.Logf("Lost closed %v after the broker closed the connection (as a test connection saw it)", at.Sub(killed))
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed within 5s of the broker closing the connection")
	}
	if err := ds[1].Ack(ctx); err == nil {
		t.Error("Ack of a lost delivery succeeded")
	}
	if err := ds[2].Nack(ctx); err != nil {
		t.Errorf("Nack of a lost delivery = %v, want nil (it only forgets it)", err)
	}
	_ = ds[3].Nack(ctx)

	// The broker delivers the three unacknowledged messages again, on a
	// new channel (the Nack of a lost delivery did not pause consuming).
	again := receive(3)
	ids := map[string]bool{}
	for _, d := range again {
		ids[d.Message().ID] = true
		if d.Lost() == lost || isClosed(d.Lost()) {
			t.Error("a delivery of the new channel shares the dead channel's Lost, or it is closed")
		}
		if d.Message().Attempt != 2 {
			t.Errorf("redelivered %s has Attempt %d, want 2", d.Message().ID, d.Message().Attempt)
		}
	}
	if len(ids) != 3 || ids["m0"] {
		t.Errorf("redelivered %v, want m1, m2 and m3 (m0 was acknowledged)", ids)
	}

	// 2. The subscription recycles its channel: a Receive that ends with
	// its context pauses consuming, and the next one closes the channel,
	// so the broker requeues what it holds in order.
	lost = again[0].Lost()
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := sub.Receive(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive with nothing to receive = %v, want a deadline error", err)
	}
	cancelShort()
	if isClosed(lost) {
		t.Fatal("pausing lost the deliveries")
	}
	resumed := make(chan []mq.Delivery, 1)
	go func() {
		ds, _ := sub.Receive(ctx, 3)
		resumed <- ds
	}()
	waitClosed(t, lost, 5*time.Second, "after the subscription recycled its channel")
	for _, d := range again {
		if err := d.Ack(ctx); err == nil {
			t.Errorf("Ack of %s, lost to a recycled channel, succeeded", d.Message().ID)
		}
	}
	third := <-resumed
	if len(third) == 0 {
		t.Fatal("nothing delivered after the recycle")
	}
	for _, d := range third {
		if err := d.Ack(ctx); err != nil {
			t.Errorf("Ack after the recycle: %v", err)
		}
	}

	// 3. Close loses whatever is still held.
	if err := conn.Send(ctx, topic, []*mq.Message{{ID: "last"}}); err != nil {
		t.Fatal(err)
	}
	var last mq.Delivery
	for last == nil {
		ds := receive(1)
		if ds[0].Message().ID == "last" {
			last = ds[0]
		} else {
			_ = ds[0].Ack(ctx) // a redelivery the recycle left behind
		}
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if !isClosed(last.Lost()) {
		t.Error("Lost still open after the subscription closed")
	}
}

// deathLog is a slog.Handler that records when a subscription saw its
// channel die (the supervisor's "consumer interrupted" warning, logged as
// it closes the channel's Lost).
type deathLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *deathLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *deathLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *deathLog) WithGroup(string) slog.Handler            { return l }

func (l *deathLog) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "rabbit: consumer interrupted") {
		l.mu.Lock()
		l.times = append(l.times, r.Time)
		l.mu.Unlock()
	}
	return nil
}

// deaths returns the recorded times.
func (l *deathLog) deaths() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.times)
}

// TestLostUnderLoad kills every connection, three times, while two
// consumer instances of a sharded group (single active consumer per
// shard) run handlers concurrently, and checks that:
//
//   - every handler running when its instance's channel died has its
//     context cancelled, and returns, within two seconds;
//   - nothing handled on a dead channel is acknowledged: a handler that
//     ignores its cancelled context and returns nil still sees its
//     message come back;
//   - nothing is lost: every message is handled to completion;
//   - per-key order holds: no message is handled before every earlier
//     message of its key has completed once;
//   - the two instances never run handlers of one key at the same time.
func TestLostUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("kills connections under load")
	}
	b := testbed.SharedRabbitMQ(t)
	topic := uniqueTopic("lostload")
	const keys, perKey = 12, 40

	type run struct {
		member     int
		start, end time.Time
		cancelled  bool
	}
	var (
		mu       sync.Mutex
		running  = map[string]int{}       // key → instance running it (1, 2), 0 for none
		since    = map[string]time.Time{} // key → when that run started
		maxDone  = map[string]int{}       // key → highest seq completed
		done     = map[string]bool{}      // IDs completed
		runs     []run
		problems []string
		ignored  int // cancelled handlers that returned nil anyway
	)
	problem := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	handler := func(member int) mq.HandlerFunc {
		return func(ctx context.Context, m *mq.Message) error {
			var seq int
			fmt.Sscan(string(m.Body), &seq)
			r := run{member: member, start: time.Now()}
			mu.Lock()
			if other := running[m.Key]; other != 0 {
				problem("key %s: instance %d starts #%d (attempt %d) while instance %d runs the key, for %v now",
					m.Key, member, seq, m.Attempt, other, r.start.Sub(since[m.Key]))
			}
			running[m.Key], since[m.Key] = member, r.start
			if prev, ok := maxDone[m.Key]; (ok && seq > prev+1) || (!ok && seq > 0) {
				problem("key %s: instance %d handles #%d before #%d completed", m.Key, member, seq, prev+1)
			}
			mu.Unlock()

			work := 15 * time.Millisecond
			if seq%10 == 7 {
				work = 2500 * time.Millisecond // long enough to be running at a kill
			}
			select {
			case <-time.After(work):
			case <-ctx.Done():
				r.cancelled = true
			}

			mu.Lock()
			defer mu.Unlock()
			r.end = time.Now()
			running[m.Key] = 0
			runs = append(runs, r)
			if r.cancelled {
				if seq%20 == 7 {
					// Ignoring the cancellation: this nil must not
					// acknowledge a message of a dead channel.
					ignored++
					return nil
				}
				return ctx.Err()
			}
			done[m.ID] = true
			maxDone[m.Key] = max(maxDone[m.Key], seq)
			return nil
		}
	}
	logs := []*deathLog{nil, {}, {}}
	var clients []*mq.Client
	for member := 1; member <= 2; member++ {
		cfg, err := rabbit.ParseURL(b.URL + "?shards=4&reconnect_backoff=20ms&max_reconnect_backoff=500ms")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Logger = slog.New(logs[member])
		conn, err := rabbit.Dial(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		c := mq.NewClient(conn)
		t.Cleanup(func() { _ = c.Close() })
		consumeT(t, c, topic, handler(member), mq.WithGroup("g"), mq.WithConcurrency(6))
		clients = append(clients, c)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var msgs []*mq.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &mq.Message{ID: fmt.Sprintf("k%02d-%03d", k, i), Key: fmt.Sprintf("key-%02d", k), Body: []byte(fmt.Sprint(i))})
		}
	}
	p := clients[0].Producer()
	for i := 0; i < len(msgs); i += 120 {
		if err := p.Produce(ctx, topic, msgs[i:min(i+120, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	completed := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(done)
	}
	var kills []time.Time
	for _, share := range []int{10, 35, 60} {
		waitFor(t, 40*time.Second, fmt.Sprintf("%d%% of the messages", share), func() bool { return completed() >= len(msgs)*share/100 })
		kills = append(kills, closeAllConnections(t, b))
	}
	waitFor(t, 40*time.Second, "every message", func() bool { return completed() == len(msgs) })

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	// Every run going on when its instance saw its channel die must end
	// within 2s of that, cancelled (a fast one may finish first).
	var straddling, cancelled int
	var worst, worstCancel time.Duration
	for member := 1; member <= 2; member++ {
		deaths := logs[member].deaths()
		if len(deaths) < len(kills) {
			t.Errorf("instance %d saw %d channel deaths, want %d", member, len(deaths), len(kills))
		}
		for _, death := range deaths {
			for _, r := range runs {
				if r.member != member || !r.start.Before(death) || !r.end.After(death) {
					continue
				}
				straddling++
				worst = max(worst, r.end.Sub(death))
				if r.cancelled {
					cancelled++
					worstCancel = max(worstCancel, r.end.Sub(death))
				}
			}
		}
	}
	var brokerLag time.Duration // sentinel close to the instances' notice
	for _, k := range kills {
		for member := 1; member <= 2; member++ {
			for _, d := range logs[member].deaths() {
				if l := d.Sub(k); l > -time.Second && l < time.Second {
					brokerLag = max(brokerLag, l)
				}
			}
		}
	}
	t.Logf("%d handler runs for %d messages; %d runs going on when their channel died, %d of them cancelled, the last returned %v after the death (%v at worst for any); "+
		"%d ignored the cancellation, returned nil and came back; instances saw the kill at most %v after a test connection did",
		len(runs), len(msgs), straddling, cancelled, worstCancel, worst, ignored, brokerLag)
	if cancelled == 0 {
		t.Error("no handler was cancelled by a channel death: the test proved nothing")
	}
	if ignored == 0 {
		t.Log("no cancelled handler returned nil this time: the no-ack-after-loss check did not run")
	}
	if worst > 2*time.Second {
		t.Errorf("a handler running when its channel died returned %v after, want under 2s", worst)
	}
}
