package kafka_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/kafka"
)

// TestDelay runs the Kafka-specific delayed-delivery tests against one
// broker of their own (the last one restarts it). Lateness and
// throughput are logged, never asserted.
func TestDelay(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	// One partition for the transaction log makes the first relay start
	// fast; a 1 s check for timed-out transactions makes a killed relay's
	// open transaction end soon.
	b := testbed.Kafka(t,
		testbed.WithEnv("KAFKA_NUM_PARTITIONS", "3"),
		testbed.WithEnv("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "1"),
		testbed.WithEnv("KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS", "1000"))
	u := b.URL + "/?create_topics=true&partitions=3&session_timeout=6s&drain_timeout=5s&dial_timeout=2s"
	open := func(t testing.TB) *mq.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := mq.Open(ctx, u)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	t.Run("Lateness", func(t *testing.T) { testDelayLateness(t, open(t)) })
	t.Run("ForwardThroughput", func(t *testing.T) { testDelayThroughput(t, open(t)) })
	t.Run("LongDoesNotHoldShort", func(t *testing.T) { testDelayLongShort(t, open(t)) })
	t.Run("Stats", func(t *testing.T) { testDelayStats(t, open(t)) })
	t.Run("RelayJoinsOnlyWithLevels", func(t *testing.T) { testDelayRelayLifecycle(t, b, open(t)) })
	t.Run("ThreeClientsMoveOnce", func(t *testing.T) { testDelayThreeClients(t, open) })
	t.Run("KilledRelayMovesOnce", func(t *testing.T) { testDelayKilledRelay(t, u, open(t)) })
	t.Run("BrokerRestart", func(t *testing.T) { testDelayBrokerRestart(t, b, open(t)) })
}

// arrivalLog records the first arrival of each message ID and counts
// them all.
type arrivalLog struct {
	mu sync.Mutex
	at map[string]time.Time
	n  map[string]int
}

func newArrivalLog() *arrivalLog {
	return &arrivalLog{at: map[string]time.Time{}, n: map[string]int{}}
}

func (a *arrivalLog) handle(_ context.Context, m *mq.Message) error {
	now := time.Now()
	a.mu.Lock()
	if a.n[m.ID] == 0 {
		a.at[m.ID] = now
	}
	a.n[m.ID]++
	a.mu.Unlock()
	return nil
}

// wait waits until every message of msgs arrived, reporting how many did.
// It looks every 50 ms, at what has not arrived yet.
func (a *arrivalLog) wait(msgs []*mq.Message, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	pending := slices.Clone(msgs)
	for {
		a.mu.Lock()
		if len(a.n) >= len(msgs) { // cheap before the scan: enough IDs arrived
			pending = slices.DeleteFunc(pending, func(m *mq.Message) bool { return a.n[m.ID] > 0 })
		}
		a.mu.Unlock()
		if len(pending) == 0 || !time.Now().Before(deadline) {
			return len(msgs) - len(pending)
		}
		time.Sleep(min(50*time.Millisecond, time.Until(deadline)))
	}
}

// lateness returns how late each message arrived after its DeliverAt,
// sorted, and counts messages that arrived early or more than once.
func (a *arrivalLog) lateness(msgs []*mq.Message) (late []time.Duration, early, dups int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range msgs {
		if a.n[m.ID] == 0 {
			continue
		}
		d := a.at[m.ID].Sub(m.DeliverAt)
		if d < 0 {
			early++
		}
		dups += a.n[m.ID] - 1
		late = append(late, d)
	}
	slices.Sort(late)
	return late, early, dups
}

func pct(late []time.Duration, p int) time.Duration {
	if len(late) == 0 {
		return 0
	}
	return late[min(len(late)-1, len(late)*p/100)].Round(time.Millisecond)
}

// consume runs a consumer of topic in group until the test ends.
func consume(t *testing.T, c *mq.Client, topic, group string, h mq.HandlerFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cons, err := c.Consumer(ctx, topic, mq.WithGroup(group), mq.WithConcurrency(32))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cons.Consume(ctx, h)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cons.Close()
	})
}

// produceDelayed produces msgs in batches of 500.
func produceDelayed(t *testing.T, c *mq.Client, topic string, msgs []*mq.Message) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	began := time.Now()
	for i := 0; i < len(msgs); i += 500 {
		if err := c.Producer().Produce(ctx, topic, msgs[i:min(i+500, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	return time.Since(began)
}

// testDelayLateness schedules 10,000 messages due over 10 s and logs how
// late they arrive. MQ_DELAY_LOAD=100000:1m changes the count and spread
// (for runs by hand).
func testDelayLateness(t *testing.T, c *mq.Client) {
	n, spread := 10000, 10*time.Second
	if v := os.Getenv("MQ_DELAY_LOAD"); v != "" {
		cnt, dur, _ := strings.Cut(v, ":")
		var err error
		if n, err = strconv.Atoi(cnt); err != nil {
			t.Fatalf("MQ_DELAY_LOAD=%s: %v", v, err)
		}
		if spread, err = time.ParseDuration(dur); err != nil {
			t.Fatalf("MQ_DELAY_LOAD=%s: %v", v, err)
		}
	}
	topic := "delay-late-" + mq.NewID()
	arr := newArrivalLog()
	consume(t, c, topic, "g", arr.handle)
	// Warm up: the first delayed message creates the level topics and
	// makes the relay join its group.
	warm := []*mq.Message{(&mq.Message{Body: []byte("warm")}).DeliverAfter(spread + 2*time.Second)}
	produceDelayed(t, c, topic, warm)

	// The first is due 2 s after the last is expected to be scheduled
	// (about 10,000 a second here).
	start := time.Now().Add(2*time.Second + time.Duration(n)*100*time.Microsecond)
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%100), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(rand.N(spread))}
	}
	took := produceDelayed(t, c, topic, msgs)
	if late := time.Since(start); late > 0 {
		t.Logf("scheduling took %v, past the first due time", late.Round(time.Millisecond))
	}
	got := arr.wait(msgs, time.Until(start.Add(spread))+time.Minute)
	late, early, dups := arr.lateness(msgs)
	t.Logf("scheduled %d messages in %v (%.0f/s), due over the %v after that", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), spread)
	t.Logf("lateness: p50 %v, p90 %v, p99 %v, max %v; %d early, %d handled twice, %d of %d arrived",
		pct(late, 50), pct(late, 90), pct(late, 99), pct(late, 100), early, dups, got, n)
	if got != n || early > 0 {
		t.Errorf("%d of %d arrived, %d early", got, n, early)
	}
}

// testDelayThroughput schedules 10,000 messages due at one instant and
// logs how fast the relay moves them into the topic.
func testDelayThroughput(t *testing.T, c *mq.Client) {
	topic := "delay-burst-" + mq.NewID()
	arr := newArrivalLog()
	consume(t, c, topic, "g", arr.handle)
	produceDelayed(t, c, topic, []*mq.Message{(&mq.Message{Body: []byte("warm")}).DeliverAfter(10 * time.Second)})

	const n = 10000
	due := time.Now().Add(4 * time.Second)
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%100), Body: []byte(fmt.Sprint(i)), DeliverAt: due}
	}
	took := produceDelayed(t, c, topic, msgs)
	got := arr.wait(msgs, time.Minute)
	late, early, dups := arr.lateness(msgs)
	k, _ := kafka.FromClient(c)
	written := int64(0)
	_ = k.Sarama().RefreshMetadata()
	names, _ := k.Sarama().Topics()
	for _, lt := range names {
		if !strings.HasPrefix(lt, topic+".mq-delay-") {
			continue
		}
		if lag, err := k.Lag(context.Background(), lt, "mq-delay."+topic); err == nil {
			for _, l := range lag {
				written += l.End
			}
		}
	}
	last := pct(late, 100)
	t.Logf("%d messages due at one instant (scheduled in %v): first in %v, half in %v, all in %v after due: %.0f messages/s into the topic; the level topics hold %d records (hops and transaction markers included)",
		n, took.Round(time.Millisecond), pct(late, 0), pct(late, 50), last, float64(n)/last.Seconds(), written)
	if got != n || early > 0 || dups > 0 {
		t.Errorf("%d of %d arrived, %d early, %d twice", got, n, early, dups)
	}
}

// auditTopic starts readCommitted on topic once a fresh client sees a
// leader for each of its partitions (a topic created a moment ago may
// have none yet).
func auditTopic(t *testing.T, k *kafka.Conn, topic string) *reader {
	t.Helper()
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	var addrs []string
	for _, b := range k.Sarama().Brokers() {
		addrs = append(addrs, b.Addr())
	}
	cl, err := sarama.NewClient(addrs, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		parts, err := cl.Partitions(topic)
		ok := err == nil && len(parts) > 0
		for _, p := range parts {
			if _, err := cl.Leader(topic, p); err != nil {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leaders for %s: %v", topic, err)
		}
		time.Sleep(200 * time.Millisecond)
		_ = cl.RefreshMetadata(topic)
	}
	return readCommitted(t, k, topic)
}

// testDelayLongShort: messages due in a minute, scheduled first on the
// same keys, do not hold back messages due in a second.
func testDelayLongShort(t *testing.T, c *mq.Client) {
	topic := "delay-longshort-" + mq.NewID()
	arr := newArrivalLog()
	consume(t, c, topic, "g", arr.handle)
	var long, short []*mq.Message
	for i := range 50 {
		long = append(long, (&mq.Message{Key: fmt.Sprint("k", i%5), Body: []byte("60s")}).DeliverAfter(time.Minute))
	}
	produceDelayed(t, c, topic, long)
	for i := range 50 {
		short = append(short, (&mq.Message{Key: fmt.Sprint("k", i%5), Body: []byte("1s")}).DeliverAfter(time.Second))
	}
	produceDelayed(t, c, topic, short)
	got := arr.wait(short, 30*time.Second)
	late, early, _ := arr.lateness(short)
	t.Logf("1 s messages behind 60 s ones on the same keys: p50 %v, max %v late", pct(late, 50), pct(late, 100))
	if got != len(short) || early > 0 {
		t.Fatalf("%d of %d short messages arrived within 30 s (held back by the long ones?), %d early", got, len(short), early)
	}
	if n := arr.wait(long, 0); n > 0 {
		t.Fatalf("%d messages due in a minute arrived early", n)
	}
}

// testDelayStats checks Scheduled: exact counts and the earliest due time
// while messages wait, and transaction markers left by moves through the
// level topics not counted.
func testDelayStats(t *testing.T, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "delay-stats-" + mq.NewID()
	arr := newArrivalLog()
	consume(t, c, topic, "g", arr.handle)
	first := time.Now().Add(30 * time.Minute).Truncate(time.Microsecond).Add(123 * time.Nanosecond)
	var waiting []*mq.Message
	for i := range 100 {
		waiting = append(waiting, &mq.Message{Key: fmt.Sprint("k", i), Body: []byte("later"), DeliverAt: first.Add(time.Duration(i) * time.Minute)})
	}
	rand.Shuffle(len(waiting), func(i, j int) { waiting[i], waiting[j] = waiting[j], waiting[i] })
	produceDelayed(t, c, topic, waiting)
	check := func(when string) {
		t.Helper()
		st, err := c.Scheduled(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: Scheduled = %d waiting, next due %v", when, st.Waiting, st.NextDue)
		if st.Waiting != 100 || !st.NextDue.Equal(first) {
			t.Errorf("%s: Scheduled = %d waiting, next due %v; want 100, %v", when, st.Waiting, st.NextDue, first)
		}
	}
	check("100 waiting")
	// Messages moved through several levels in transactions leave commit
	// markers there, which Waiting must not count.
	var soon []*mq.Message
	for i := range 50 {
		soon = append(soon, (&mq.Message{Key: fmt.Sprint("k", i), Body: []byte("soon")}).DeliverAfter(time.Duration(500+rand.N(2500))*time.Millisecond))
	}
	produceDelayed(t, c, topic, soon)
	if got := arr.wait(soon, 30*time.Second); got != len(soon) {
		t.Fatalf("%d of %d arrived", got, len(soon))
	}
	time.Sleep(time.Second) // the last commits of the relay's offsets
	check("after 50 more were moved through the levels and delivered")
}

// testDelayRelayLifecycle: a subscription of a topic with no delayed
// messages joins no relay group; the first delayed message makes the
// relay join; closing the last subscription makes it leave.
func testDelayRelayLifecycle(t *testing.T, b *testbed.Broker, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "delay-life-" + mq.NewID()
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	admin, err := sarama.NewClusterAdmin([]string{b.Addr}, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	state := func() (string, int) {
		d, err := admin.DescribeConsumerGroups([]string{"mq-delay." + topic})
		if err != nil || len(d) != 1 {
			t.Fatalf("describe: %v", err)
		}
		return d[0].State, len(d[0].Members)
	}
	waitState := func(want string, members int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			s, m := state()
			if s == want && m == members {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("relay group is %s with %d members, want %s with %d", s, m, want, members)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	arr := newArrivalLog()
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = cons.Consume(cctx, mq.HandlerFunc(arr.handle)) }()
	time.Sleep(2500 * time.Millisecond) // two polls for level topics
	if s, _ := state(); s != "Dead" {
		t.Fatalf("relay group of a topic without delayed messages is %s, want Dead (never joined)", s)
	}
	m := (&mq.Message{Body: []byte("x")}).DeliverAfter(500 * time.Millisecond)
	began := time.Now()
	produceDelayed(t, c, topic, []*mq.Message{m})
	waitState("Stable", 1)
	joined := time.Since(began)
	if got := arr.wait([]*mq.Message{m}, 30*time.Second); got != 1 {
		t.Fatal("the delayed message never arrived")
	}
	late, _, _ := arr.lateness([]*mq.Message{m})
	t.Logf("first delayed message of a topic: relay group stable %v after Produce began, the message (due in 500 ms) %v late", joined.Round(time.Millisecond), pct(late, 0))
	stop()
	<-done
	began = time.Now()
	if err := cons.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("closing the last subscription (which stops the relay) took %v", time.Since(began).Round(time.Millisecond))
	waitState("Empty", 0)
}

// testDelayThreeClients runs the consumers of a group in three clients,
// so three relays share the relay group, and replaces one of them while
// messages are being moved: a reader outside any group sees every message
// in the topic exactly once.
func testDelayThreeClients(t *testing.T, open func(testing.TB) *mq.Client) {
	topic := "delay-three-" + mq.NewID()
	arr := newArrivalLog()
	c1, c2, c3 := open(t), open(t), open(t)
	consume(t, c1, topic, "g", arr.handle)
	consume(t, c3, topic, "g", arr.handle)
	ctx2, cancel2 := context.WithCancel(context.Background())
	cons2, err := c2.Consumer(ctx2, topic, mq.WithGroup("g"), mq.WithConcurrency(32))
	if err != nil {
		t.Fatal(err)
	}
	done2 := make(chan struct{})
	go func() { defer close(done2); _ = cons2.Consume(ctx2, mq.HandlerFunc(arr.handle)) }()
	k, _ := kafka.FromClient(c1)
	audit := auditTopic(t, k, topic)

	const n = 1500
	start := time.Now().Add(time.Second)
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%50), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(rand.N(6 * time.Second))}
	}
	produceDelayed(t, c1, topic, msgs)
	time.Sleep(time.Until(start.Add(2 * time.Second)))
	// One client leaves while moves are under way, another joins.
	cancel2()
	<-done2
	_ = cons2.Close()
	_ = c2.Close()
	t.Logf("client 2 closed with %d of %d messages in the topic", audit.distinct(), n)
	time.Sleep(time.Second)
	consume(t, open(t), topic, "g", arr.handle)
	t.Logf("client 4 started with %d of %d messages in the topic", audit.distinct(), n)

	if !audit.waitDistinct(n, time.Minute) {
		t.Fatalf("%d of %d messages reached the topic", audit.distinct(), n)
	}
	got := arr.wait(msgs, 30*time.Second)
	time.Sleep(2 * time.Second) // late duplicates
	moved := audit.snapshot()
	twice := 0
	for _, m := range msgs {
		if moved[m.ID] != 1 {
			twice++
		}
	}
	late, early, dups := arr.lateness(msgs)
	t.Logf("3 clients, one replaced mid-stream: %d messages, %d in the topic more than once; group g handled %d (%d redelivered), lateness p50 %v p99 %v max %v",
		n, twice, got, dups, pct(late, 50), pct(late, 99), pct(late, 100))
	if twice > 0 || got != n || early > 0 || len(moved) != n {
		t.Errorf("%d moved more than once, %d of %d handled, %d early, %d distinct in the topic", twice, got, n, early, len(moved))
	}
}

// testDelayKilledRelay SIGKILLs the only relay (in a child process) twice
// while it moves messages, restarting it each time: a reader outside any
// group sees every message in the topic exactly once.
func testDelayKilledRelay(t *testing.T, u string, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topic := "delay-kill-" + mq.NewID()
	k, _ := kafka.FromClient(c)
	for try := 0; ; try++ { // a broker just started may still refuse for a moment
		err := k.CreateTopic(ctx, topic, 3, 1)
		if err == nil {
			break
		}
		if try == 20 {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	audit := auditTopic(t, k, topic)
	const n, kills = 2000, 2
	start := time.Now().Add(2 * time.Second)
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%50), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(rand.N(12 * time.Second))}
	}
	produceDelayed(t, c, topic, msgs)
	env := append(os.Environ(), "MQ_DELAY_CHILD=1", "MQ_DELAY_URL="+u, "MQ_DELAY_TOPIC="+topic)
	for kill := range kills + 1 {
		child := startDelayChild(ctx, t, env)
		if kill < kills {
			want := (kill + 1) * n / (kills + 2)
			if !audit.waitDistinct(want, time.Minute) {
				t.Fatalf("child %d: %d messages in the topic, want %d before killing it", kill, audit.distinct(), want)
			}
			child.kill()
			t.Logf("SIGKILLed relay %d with %d of %d messages in the topic", kill, audit.distinct(), n)
			continue
		}
		if !audit.waitDistinct(n, 2*time.Minute) {
			t.Errorf("the last relay left %d messages unmoved", n-audit.distinct())
		}
		time.Sleep(3 * time.Second)
		child.kill()
	}
	moved := audit.snapshot()
	twice, missing := 0, 0
	for _, m := range msgs {
		switch moved[m.ID] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	t.Logf("relay SIGKILLed %d times: %d messages, %d in the topic more than once, %d missing", kills, n, twice, missing)
	if twice > 0 || missing > 0 {
		t.Errorf("%d moved more than once, %d missing", twice, missing)
	}
}

type delayChild struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startDelayChild(ctx context.Context, t *testing.T, env []string) *delayChild {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestDelayChild$", "-test.v")
	cmd.Env = env
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &delayChild{cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(ch.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY") {
				close(ready)
			}
		}
	}()
	t.Cleanup(ch.kill)
	select {
	case <-ready:
	case <-ch.done:
		t.Fatal("relay child exited before it was ready")
	case <-time.After(time.Minute):
		t.Fatal("relay child not ready after a minute")
	}
	return ch
}

func (c *delayChild) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
		_ = c.cmd.Wait()
	}
}

// TestDelayChild is the relay process that testDelayKilledRelay starts
// and kills: a consumer of the topic, whose relay moves its delayed
// messages. It does nothing unless started by that test.
func TestDelayChild(t *testing.T) {
	if os.Getenv("MQ_DELAY_CHILD") == "" {
		return // not a test of its own
	}
	ctx := context.Background()
	c, err := mq.Open(ctx, os.Getenv("MQ_DELAY_URL"))
	if err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consumer(ctx, os.Getenv("MQ_DELAY_TOPIC"), mq.WithGroup("child"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("READY")
	t.Fatal(cons.Consume(ctx, mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil })))
}

// testDelayBrokerRestart restarts the broker while 500 messages wait in
// the level topics (and some are being moved): none is lost.
func testDelayBrokerRestart(t *testing.T, b *testbed.Broker, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topic := "delay-restart-" + mq.NewID()
	arr := newArrivalLog()
	consume(t, c, topic, "g", arr.handle)
	k, _ := kafka.FromClient(c)
	audit := auditTopic(t, k, topic)
	const n = 500
	start := time.Now().Add(time.Second)
	msgs := make([]*mq.Message, n)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprintf("k%d", i%50), Body: []byte(fmt.Sprint(i)), DeliverAt: start.Add(rand.N(10 * time.Second))}
	}
	produceDelayed(t, c, topic, msgs)
	time.Sleep(time.Until(start.Add(2 * time.Second)))
	before := audit.distinct()
	began := time.Now()
	if err := b.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("broker restarted in %v; %d of %d messages had reached the topic before", time.Since(began).Round(time.Millisecond), before, n)
	if !audit.waitDistinct(n, 2*time.Minute) {
		t.Errorf("%d of %d messages reached the topic after the restart", audit.distinct(), n)
	}
	got := arr.wait(msgs, time.Minute)
	time.Sleep(2 * time.Second)
	moved := audit.snapshot()
	twice := 0
	for _, m := range msgs {
		if moved[m.ID] > 1 {
			twice++
		}
	}
	late, early, dups := arr.lateness(msgs)
	t.Logf("broker restart: %d of %d handled (%d lost), %d in the topic more than once, %d redelivered, %d early; lateness p50 %v max %v",
		got, n, n-got, twice, dups, early, pct(late, 50), pct(late, 100))
	if got != n || early > 0 {
		t.Errorf("%d of %d delivered, %d early", got, n, early)
	}
	if twice > 0 {
		t.Errorf("%d messages moved more than once", twice)
	}
}
