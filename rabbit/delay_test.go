package rabbit_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/rabbit"
)

// delayLog records when each delayed message was handled, and how often.
type delayLog struct {
	mu sync.Mutex
	at map[string]time.Time
	n  map[string]int
}

func newDelayLog() *delayLog {
	return &delayLog{at: map[string]time.Time{}, n: map[string]int{}}
}

func (l *delayLog) handle(_ context.Context, m *mq.Message) error {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[m.ID] == 0 {
		l.at[m.ID] = now
	}
	l.n[m.ID]++
	return nil
}

// count returns how many of msgs arrived, and how many more than once.
func (l *delayLog) count(msgs []*mq.Message) (arrived, dups int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range msgs {
		if n := l.n[m.ID]; n > 0 {
			arrived++
			if n > 1 {
				dups++
			}
		}
	}
	return arrived, dups
}

// lateness returns how late each message of msgs arrived, sorted, and
// fails the test for any that came early.
func (l *delayLog) lateness(t *testing.T, msgs []*mq.Message) []time.Duration {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	late := make([]time.Duration, 0, len(msgs))
	early := 0
	for _, m := range msgs {
		at, ok := l.at[m.ID]
		if !ok {
			continue
		}
		if at.Before(m.DeliverAt) {
			early++
		}
		late = append(late, at.Sub(m.DeliverAt))
	}
	if early > 0 {
		t.Errorf("%d of %d delayed messages delivered before DeliverAt", early, len(msgs))
	}
	slices.Sort(late)
	return late
}

func pct(late []time.Duration, p int) time.Duration {
	if len(late) == 0 {
		return 0
	}
	return late[min(len(late)*p/100, len(late)-1)].Round(time.Millisecond)
}

// produceAll produces msgs in batches of 100.
func produceAll(t *testing.T, p mq.Producer, topic string, msgs []*mq.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < len(msgs); i += 100 {
		if err := p.Produce(ctx, topic, msgs[i:min(i+100, len(msgs))]...); err != nil {
			t.Fatalf("Produce: %v", err)
		}
	}
}

// TestDelayLongBeforeShortInOneBatch: a 60 s message and a 1 s message of
// the same key, scheduled in one Produce with the long one first, enter
// the same level exchange; the short one must come after about a second
// while the long one waits on, and the level queues are quorum queues.
func TestDelayLongBeforeShortInOneBatch(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL)
	topic := uniqueTopic("delay-batch")
	log := newDelayLog()
	consumeT(t, c, topic, log.handle, mq.WithGroup("g"))
	long := (&mq.Message{Key: "k", Body: []byte("60s")}).DeliverAfter(time.Minute)
	short := (&mq.Message{Key: "k", Body: []byte("1s")}).DeliverAfter(time.Second)
	produceAll(t, c.Producer(), topic, []*mq.Message{long, short})
	waitFor(t, 10*time.Second, "the 1 s message", func() bool { n, _ := log.count([]*mq.Message{short}); return n == 1 })
	late := log.lateness(t, []*mq.Message{short})
	t.Logf("1 s message arrived %v late, with a 60 s one ahead of it", late[0])
	if late[0] > 2*time.Second {
		t.Errorf("1 s message arrived %v late", late[0])
	}
	if n, _ := log.count([]*mq.Message{long}); n != 0 {
		t.Fatal("the 60 s message arrived already")
	}
	st, err := c.Scheduled(context.Background(), topic)
	if err != nil || st.Waiting != 1 {
		t.Fatalf("Scheduled = %+v, %v; want the 60 s message waiting", st, err)
	}

	// The level queues are quorum queues (at-least-once dead-lettering),
	// the due queue a classic one.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, out, err := b.Container().Exec(ctx, []string{"rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "type"}, tcexec.Multiplexed())
	if err != nil || code != 0 {
		t.Fatalf("rabbitmqctl list_queues: exit %d, %v", code, err)
	}
	var text strings.Builder
	_, _ = io.Copy(&text, out)
	types := map[string]string{}
	for _, line := range strings.Split(text.String(), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[0], topic+".mq-delay.") {
			types[strings.TrimPrefix(f[0], topic+".")] = f[1]
		}
	}
	t.Logf("delay queues: %v", types)
	if len(types) < 2 || types["mq-delay.due"] != "classic" {
		t.Fatalf("delay queues and types: %v, want level queues and a classic due queue", types)
	}
	for q, typ := range types {
		if q != "mq-delay.due" && typ != "quorum" {
			t.Errorf("level queue %s is a %s queue, want quorum", q, typ)
		}
	}
}

// TestDelaySurvivesBrokerRestart restarts the broker while 500 delayed
// messages wait (some due during the restart, most after it, at every
// level from 128 ms to 8 s): every one arrives, none early.
func TestDelaySurvivesBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a broker")
	}
	b := testbed.RabbitMQ(t)
	url := b.URL + "?reconnect_backoff=50ms&max_reconnect_backoff=1s&reconnect_timeout=30s"
	logs := &lockedBuffer{}
	cc := dialT(t, url, logs)
	pc := dialT(t, url, logs)
	topic := uniqueTopic("delay-restart")
	log := newDelayLog()
	consumeT(t, cc, topic, log.handle, mq.WithGroup("g"), mq.WithConcurrency(4))
	const n = 500
	start := time.Now()
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		// 1-3 s: due while the broker restarts; 3-15 s: after it.
		d := time.Second + rand.N(2*time.Second)
		if i%5 != 0 {
			d = 3*time.Second + rand.N(12*time.Second)
		}
		msgs[i] = &mq.Message{ID: fmt.Sprintf("d-%03d", i), Key: fmt.Sprintf("k%d", i%7), Body: []byte("x"), DeliverAt: start.Add(d)}
	}
	produceAll(t, pc.Producer(), topic, msgs)
	st, err := pc.Scheduled(context.Background(), topic)
	t.Logf("scheduled %d in %v; waiting before the restart: %+v, %v", n, time.Since(start).Round(time.Millisecond), st, err)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, _ := log.count(msgs)
	rs := time.Now()
	if err := b.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	t.Logf("broker restarted in %v with %d of %d delivered", restarted.Sub(rs).Round(time.Millisecond), before, n)
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, _ := log.count(msgs)
		if got == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // duplicates, if any
	got, dups := log.count(msgs)
	late := log.lateness(t, msgs)
	t.Logf("after the restart: %d of %d arrived, %d more than once (same ID); lateness p50 %v, p99 %v, max %v",
		got, n, dups, pct(late, 50), pct(late, 99), pct(late, 100))
	var later []*mq.Message
	for _, m := range msgs {
		if m.DeliverAt.After(restarted.Add(2 * time.Second)) {
			later = append(later, m)
		}
	}
	late = log.lateness(t, later)
	t.Logf("the %d due 2 s or more after the broker was back: lateness p50 %v, p99 %v, max %v", len(later), pct(late, 50), pct(late, 99), pct(late, 100))
	if got != n {
		t.Fatalf("%d of %d delayed messages lost across a broker restart", n-got, n)
	}
}

// TestDelaySharedRelay: three clients (separate connections) consume one
// group of a topic, so each runs a relay of its delayed messages; one of
// them leaves midway. Every message is handled exactly once.
func TestDelaySharedRelay(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	topic := uniqueTopic("delay-shared")
	log := newDelayLog()
	clients := make([]*mq.Client, 3)
	stops := make([]func(), 3)
	var mu sync.Mutex
	by := map[string][]int{} // the clients that handled each message
	for i := range clients {
		clients[i] = openT(t, b.URL)
		stops[i] = consumeT(t, clients[i], topic, func(ctx context.Context, m *mq.Message) error {
			mu.Lock()
			by[m.ID] = append(by[m.ID], i)
			mu.Unlock()
			return log.handle(ctx, m)
		}, mq.WithGroup("g"), mq.WithConcurrency(4))
	}
	p := openT(t, b.URL).Producer()
	const n = 3000
	start := time.Now()
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%50), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(time.Second + rand.N(3*time.Second))}
	}
	produceAll(t, p, topic, msgs)
	// Those due by the time they were produced were sent, not scheduled.
	produced, scheduled := time.Now(), 0
	for _, m := range msgs {
		if m.DeliverAt.After(produced) {
			scheduled++
		}
	}
	time.Sleep(time.Until(start.Add(2500 * time.Millisecond)))
	// The first consumer's relay is the due queue's active consumer: it
	// leaves with messages still to move.
	moved0, _ := rabbit.DelayRelayed(clients[0].Conn().(*rabbit.Conn))
	stops[0]()
	if err := clients[0].Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every delayed message", func() bool { got, _ := log.count(msgs); return got == n })
	time.Sleep(time.Second) // duplicates, if any
	got, dups := log.count(msgs)
	late := log.lateness(t, msgs)
	var moved, back []uint64
	for _, c := range clients {
		m, k := rabbit.DelayRelayed(c.Conn().(*rabbit.Conn))
		moved = append(moved, m)
		back = append(back, k)
	}
	t.Logf("sent back %v", back)
	t.Logf("%d messages, 3 relays (the first left at 2.5 s, having moved %d): moved %v; lateness p50 %v, p99 %v, max %v",
		n, moved0, moved, pct(late, 50), pct(late, 99), pct(late, 100))
	if got != n || dups != 0 {
		mu.Lock()
		var twice []string
		for id, cs := range by {
			if len(cs) > 1 {
				twice = append(twice, fmt.Sprintf("%s by %v", id, cs))
			}
		}
		mu.Unlock()
		t.Fatalf("%d of %d arrived, %d more than once (%v); want each exactly once", got, n, dups, twice)
	}
	if sum := moved[0] + moved[1] + moved[2]; sum < uint64(scheduled) || sum > n {
		t.Errorf("the relays moved %d messages in all, want %d (those due after Produce returned) to %d", sum, scheduled, n)
	}
}

// TestDelayLatenessMeasured measures, for the log, how late delayed
// messages arrive and how fast they move: 10,000 messages spread over
// 10 s, then 10,000 due at the same moment, then 10,000 put straight into
// the due queue for the relay alone. It asserts no speed, only that every
// message arrives once and none early.
func TestDelayLatenessMeasured(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of 20 s")
	}
	b := testbed.SharedRabbitMQ(t)
	if v := os.Getenv("MQ_TEST_DELAY_DLX_PREFETCH"); v != "" {
		// The broker's dead-letter worker prefetch (default 32), for the
		// queues declared from now on.
		if err := rabbitmqctl(context.Background(), b, "eval", "application:set_env(rabbit, dead_letter_worker_consumer_prefetch, "+v+")."); err != nil {
			t.Fatal(err)
		}
		t.Logf("dead_letter_worker_consumer_prefetch set to %s", v)
	}
	c := openT(t, b.URL)
	conn := c.Conn().(*rabbit.Conn)
	topic := uniqueTopic("delay-measure")
	log := newDelayLog()
	consumeT(t, c, topic, log.handle, mq.WithGroup("g"), mq.WithConcurrency(16))
	p := c.Producer()

	// MQ_TEST_DELAY_N and MQ_TEST_DELAY_SPREAD (a duration) set the
	// count and the spread of the first run (default 10000, 10s);
	// MQ_TEST_DELAY_SAMPLE=1 logs progress every 250ms;
	// MQ_TEST_DELAY_DLX_PREFETCH=N sets the broker's
	// dead_letter_worker_consumer_prefetch.
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("MQ_TEST_DELAY_N")); err == nil && v > 0 {
		n = v
	}
	spreadFor := 10 * time.Second
	if v, err := time.ParseDuration(os.Getenv("MQ_TEST_DELAY_SPREAD")); err == nil && v > 0 {
		spreadFor = v
	}
	run := func(name string, msgs []*mq.Message) {
		t.Helper()
		movedBefore, backBefore := rabbit.DelayRelayed(conn)
		begin := time.Now()
		produceAll(t, p, topic, msgs)
		produced := time.Since(begin)
		stopS := make(chan struct{})
		go func() {
			if os.Getenv("MQ_TEST_DELAY_SAMPLE") == "" {
				return
			}
			for {
				select {
				case <-stopS:
					return
				case <-time.After(250 * time.Millisecond):
				}
				mv, _ := rabbit.DelayRelayed(conn)
				got, _ := log.count(msgs)
				st, _ := conn.Scheduled(context.Background(), topic)
				lag, _ := conn.Lag(context.Background(), topic, "g")
				t.Logf("SAMPLE %s moved %d handled %d waiting %d lag %d", time.Now().Format("05.000"), mv-movedBefore, got, st.Waiting, lag)
			}
		}()
		waitFor(t, time.Until(msgs[0].DeliverAt)+spreadFor+time.Minute, name, func() bool { got, _ := log.count(msgs); return got == len(msgs) })
		close(stopS)
		got, dups := log.count(msgs)
		late := log.lateness(t, msgs)
		moved, back := rabbit.DelayRelayed(conn)
		first, last := msgs[0].DeliverAt, msgs[0].DeliverAt
		var hops int
		for _, m := range msgs {
			first, last = minTime(first, m.DeliverAt), maxTime(last, m.DeliverAt)
			// Queues each message waits in: the non-zero base-32 digits
			// of its steps of 128 ms.
			for u := uint64((m.DeliverAt.Sub(begin) + 128*time.Millisecond - 1) / (128 * time.Millisecond)); u > 0; u >>= 5 {
				if u&31 != 0 {
					hops++
				}
			}
		}
		log.mu.Lock()
		var lastAt time.Time
		for _, m := range msgs {
			lastAt = maxTime(lastAt, log.at[m.ID])
		}
		log.mu.Unlock()
		window := lastAt.Sub(first)
		t.Logf("%s: %d messages (produced in %v) due over %v: lateness p50 %v, p90 %v, p99 %v, max %v; "+
			"relay moved %d (%.0f/s over the %v from first due to last arrival), sent back %d; about %.1f broker level hops a message (%.0f hops/s)",
			name, got, produced.Round(time.Millisecond), last.Sub(first).Round(time.Millisecond),
			pct(late, 50), pct(late, 90), pct(late, 99), pct(late, 100),
			moved-movedBefore, float64(moved-movedBefore)/window.Seconds(), window.Round(time.Millisecond), back-backBefore,
			float64(hops)/float64(len(msgs)), float64(hops)/window.Seconds())
		if dups > 0 {
			t.Errorf("%s: %d messages handled more than once", name, dups)
		}
	}

	// Every message is scheduled before the first is due (producing
	// 10,000 takes a second or two), so lateness is the delay's own.
	lead := time.Second + time.Duration(n/4000)*time.Second
	start := time.Now().Add(lead)
	spread := make([]*mq.Message, n)
	for i := range spread {
		spread[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%100), Body: []byte("spread"), DeliverAt: start.Add(rand.N(spreadFor))}
	}
	run(fmt.Sprintf("spread over %v", spreadFor), spread)

	const nb = 10000
	at := time.Now().Add(4 * time.Second)
	burst := make([]*mq.Message, nb)
	for i := range burst {
		burst[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%100), Body: []byte("burst"), DeliverAt: at}
	}
	run("all due at once", burst)

	// The relay alone: 10,000 due messages put straight into the due
	// queue of a topic nobody subscribes to yet, as the last level hands
	// them over; then a subscription starts its relay.
	ch := rawChannel(t, b.URL)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	topic2 := uniqueTopic("delay-relay")
	dq := topic2 + ".mq-delay.due"
	if err := ch.ExchangeDeclare(dq, "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(dq, true, false, false, false, amqp.Table{"x-single-active-consumer": true}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(dq, "", dq, false, nil); err != nil {
		t.Fatal(err)
	}
	due := time.Now().UTC().Format(time.RFC3339Nano)
	var ids []*mq.Message
	var last *amqp.DeferredConfirmation
	var err error
	for i := range nb {
		id := fmt.Sprintf("relay-%d", i)
		ids = append(ids, &mq.Message{ID: id})
		last, err = ch.PublishWithDeferredConfirm(dq, "", true, false, amqp.Publishing{
			Headers: amqp.Table{"x-mq-key": fmt.Sprintf("k%d", i%100), mq.HeaderDeliverAt: due}, DeliveryMode: amqp.Persistent, MessageId: id, Body: []byte("relay"),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !last.Wait() {
		t.Fatal("due messages nacked")
	}
	movedBefore, _ := rabbit.DelayRelayed(conn)
	begin := time.Now()
	consumeT(t, c, topic2, log.handle, mq.WithGroup("g"), mq.WithConcurrency(16))
	waitFor(t, time.Minute, "the relay", func() bool { m, _ := rabbit.DelayRelayed(conn); return m-movedBefore == nb })
	took := time.Since(begin)
	waitFor(t, time.Minute, "the relayed messages", func() bool { got, _ := log.count(ids); return got == nb })
	t.Logf("relay alone: %d due messages waiting, moved in %v after Subscribe: %.0f moves/s (handled after %v)",
		nb, took.Round(time.Millisecond), float64(nb)/took.Seconds(), time.Since(begin).Round(time.Millisecond))
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestDelayTopologyRules: a group name that would clash with the delay
// queues is refused, and with declare=false a topic whose delay queues do
// not exist cannot schedule.
func TestDelayTopologyRules(t *testing.T) {
	b := testbed.SharedRabbitMQ(t)
	c := openT(t, b.URL)
	topic := uniqueTopic("delay-rules")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Consumer(ctx, topic, mq.WithGroup("mq-delay.due")); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("group mq-delay.due: %v, want it refused as reserved", err)
	}
	nd := openT(t, b.URL+"?declare=false")
	err := nd.Producer().Produce(ctx, topic, (&mq.Message{}).DeliverAfter(time.Minute))
	if !errors.Is(err, rabbit.ErrNotFound) {
		t.Errorf("declare=false, Produce of a delayed message to a topic without delay queues: %v, want ErrNotFound", err)
	}
	st, err := c.Scheduled(ctx, topic)
	if err != nil || st.Waiting != 0 {
		t.Errorf("Scheduled of a topic that never scheduled: %+v, %v", st, err)
	}
}
