package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/kafka"
	"github.com/mqkit/mq/mqtest"
)

// TestKafka runs everything that needs a broker against one real Apache
// Kafka started by the testbed.
func TestKafka(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	// num.partitions=3 shows that create_topics=true without partitions=
	// takes the broker's default; one partition for the transaction log
	// makes the first transactional producer start fast.
	b := testbed.Kafka(t, testbed.WithEnv("KAFKA_NUM_PARTITIONS", "3"), testbed.WithEnv("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "1"))
	open := func(t testing.TB, params string) *mq.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := mq.Open(ctx, b.URL+"/?create_topics=true&message_max_bytes=2000000&session_timeout=6s&drain_timeout=5s"+params)
		if err != nil {
			t.Fatalf("open %s: %v", b.URL, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	t.Run("Conformance", func(t *testing.T) {
		mqtest.Run(t, mqtest.Harness{
			Open:         func(t testing.TB) *mq.Client { return open(t, "&partitions=3") },
			MaxBodyBytes: 1 << 20,
			Timeout:      90 * time.Second,
			SettleTime:   2 * time.Second,
			Features: mqtest.Features{
				KeepsEarlyMessages:    true, // retained; a new group starts at the oldest offset
				Attempts:              mqtest.AttemptsReset,
				KeyOrderAcrossMembers: true, // a key maps to one partition, one member at a time
			},
		})
	})
	t.Run("KeyOrderOnePartitionConcurrency16", func(t *testing.T) { testKeyOrderOnePartition(t, open(t, "&partitions=1")) })
	t.Run("RebalanceLosesNothing", func(t *testing.T) { testRebalance(t, func() *mq.Client { return open(t, "&partitions=4") }) })
	t.Run("MissingTopicIsAnError", func(t *testing.T) {
		ctx := context.Background()
		c, err := mq.Open(ctx, b.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Producer().Produce(ctx, "no-such-topic-"+mq.NewID(), &mq.Message{Body: []byte("x")})
		if err == nil || !strings.Contains(err.Error(), "create_topics=true") {
			t.Errorf("produce to a missing topic = %v, want an error naming create_topics", err)
		}
	})
	t.Run("Lag", func(t *testing.T) { testLag(t, open(t, "&partitions=2")) })
	t.Run("Kcat", func(t *testing.T) { testKcat(t, b, open(t, "&partitions=1")) })
	t.Run("PythonToGo", func(t *testing.T) { testPythonToGo(t, b, open(t, "")) })
	t.Run("GoToPython", func(t *testing.T) { testGoToPython(t, b, open(t, "")) })
	t.Run("TombstoneMisuseRejected", func(t *testing.T) { testTombstoneRejected(t, open(t, "")) })
	t.Run("ReadCommittedByDefault", func(t *testing.T) { testTransactions(t, b, open(t, ""), open) })
	t.Run("CreateTopicsBrokerDefaultPartitions", func(t *testing.T) { testBrokerDefaultPartitions(t, open) })
	t.Run("LagUnknownGroup", func(t *testing.T) { testLagUnknownGroup(t, open(t, "")) })
	t.Run("PythonPartitioner", func(t *testing.T) { testPythonPartitioner(t, b, open(t, "")) })
	t.Run("DeleteGroup", func(t *testing.T) { testDeleteGroup(t, open(t, "&partitions=1")) })
}

func testKeyOrderOnePartition(t *testing.T, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topic := "order-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(16))
	if err != nil {
		t.Fatal(err)
	}
	const keys, perKey = 50, 40
	var msgs []*mq.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &mq.Message{Key: fmt.Sprintf("k%02d", k), Body: []byte(fmt.Sprint(i))})
		}
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	next := map[string]int{}
	var bad []string
	handled, running, peak := 0, 0, 0
	cctx, stop := context.WithCancel(ctx)
	err = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		mu.Lock()
		running++
		peak = max(peak, running)
		var seq int
		fmt.Sscan(string(m.Body), &seq)
		if seq != next[m.Key] && len(bad) < 10 {
			bad = append(bad, fmt.Sprintf("key %s: #%d after #%d", m.Key, seq, next[m.Key]-1))
		}
		next[m.Key] = seq + 1
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		running--
		handled++
		if handled == len(msgs) {
			stop()
		}
		mu.Unlock()
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if handled != len(msgs) {
		t.Fatalf("handled %d of %d", handled, len(msgs))
	}
	if len(bad) > 0 {
		t.Errorf("per-key order broken on one partition:\n%s", strings.Join(bad, "\n"))
	}
	if peak < 8 {
		t.Errorf("peak concurrency %d on one partition with concurrency 16 over %d keys", peak, keys)
	}
	t.Logf("%d messages, one partition, peak concurrency %d", len(msgs), peak)
}

// testRebalance runs a producer while consumers join and leave one group,
// and counts every message: none may be lost.
func testRebalance(t *testing.T, open func() *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	topic := "rebalance-" + mq.NewID()
	var mu sync.Mutex
	seen := map[string]int{}
	handler := mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		time.Sleep(time.Millisecond)
		mu.Lock()
		seen[m.ID]++
		mu.Unlock()
		return nil
	})
	start := func(c *mq.Client) (stop func()) {
		cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"), mq.WithConcurrency(8))
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cons.Consume(cctx, handler) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Consume: %v", err)
			}
			_ = cons.Close()
		}
	}
	c1 := open()
	stop1 := start(c1)

	var produced []string
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		p := open().Producer()
		for i := range 60 {
			batch := make([]*mq.Message, 25)
			for j := range batch {
				batch[j] = &mq.Message{Key: fmt.Sprintf("k%d", (i*25+j)%37), Body: []byte("x")}
			}
			if err := p.Produce(ctx, topic, batch...); err != nil {
				t.Errorf("produce: %v", err)
				return
			}
			for _, m := range batch {
				produced = append(produced, m.ID)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	stop2 := start(open()) // rebalance: a member joins
	time.Sleep(2 * time.Second)
	stop1() // rebalance: a member leaves mid-stream
	stop3 := start(open())
	<-prodDone
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		missing := 0
		for _, id := range produced {
			if seen[id] == 0 {
				missing++
			}
		}
		dups := 0
		for _, n := range seen {
			dups += n - 1
		}
		mu.Unlock()
		if missing == 0 {
			t.Logf("rebalances: %d produced, 0 lost, %d redelivered (at-least-once)", len(produced), dups)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d confirmed messages never handled across rebalances", missing, len(produced))
		}
		time.Sleep(200 * time.Millisecond)
	}
	stop2()
	stop3()
}

func testLag(t *testing.T, c *mq.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "lag-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	k, ok := kafka.FromClient(c)
	if !ok {
		t.Fatal("FromClient: not a Kafka client")
	}
	// The member joins in the background: wait until the cluster knows
	// the group (before, Lag says ErrUnknownGroup), then leave without
	// committing anything.
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.Consume(cctx, mq.HandlerFunc(func(context.Context, *mq.Message) error { return nil }))
	}()
	for {
		_, err := k.Lag(ctx, topic, "g")
		if err == nil {
			break
		}
		if !errors.Is(err, kafka.ErrUnknownGroup) || ctx.Err() != nil {
			t.Fatalf("Lag while the member joins: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_ = cons.Close()
	msgs := make([]*mq.Message, 10)
	for i := range msgs {
		msgs[i] = &mq.Message{Key: fmt.Sprint(i)}
	}
	if err := c.Producer().Produce(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	lag, err := k.Lag(ctx, topic, "g")
	if err != nil {
		t.Fatal(err)
	}
	total := int64(0)
	for _, p := range lag {
		total += p.Lag
	}
	if len(lag) != 2 || total != 10 {
		t.Errorf("Lag = %+v, want 2 partitions lagging 10 in total", lag)
	}

	// The portable view: the same backlog, and the age of the oldest
	// uncommitted record.
	time.Sleep(50 * time.Millisecond)
	plag, err := c.Lag(ctx, topic, "g")
	if err != nil {
		t.Fatal(err)
	}
	total = 0
	for _, p := range plag {
		total += p.Backlog
		if p.Unacked != -1 || (p.Backlog > 0 && p.OldestAge < 50*time.Millisecond) {
			t.Errorf("portable lag %+v: want Unacked -1 and the oldest record at least 50ms old", p)
		}
	}
	if len(plag) != 2 || total != 10 || plag[0].Partition != "0" {
		t.Errorf("Client.Lag = %+v, want partitions 0 and 1 lagging 10 in total", plag)
	}
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// testKcat checks interoperability with kcat, a client nobody here wrote.
func testKcat(t *testing.T, b *testbed.Broker, c *mq.Client) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("kcat not installed (scripts/test.sh installs it)")
		}
		t.Skip("kcat not installed: apt-get install kcat")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// kcat -> mq
	topic := "kcat-in-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, kcat, "-b", b.Addr, "-t", topic, "-P", "-k", "order-7", "-H", "trace=abc", "-H", "kind=created")
	cmd.Stdin = strings.NewReader("hello from kcat")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat -P: %v\n%s", err, out)
	}
	got := make(chan *mq.Message, 1)
	cctx, stop := context.WithCancel(ctx)
	go func() {
		_ = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			got <- m.Clone()
			stop()
			return nil
		}))
	}()
	select {
	case m := <-got:
		if m.Key != "order-7" || string(m.Body) != "hello from kcat" || m.Headers["trace"] != "abc" || m.Headers["kind"] != "created" || m.ID == "" {
			t.Errorf("record from kcat consumed as %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("record produced by kcat never consumed")
	}

	// mq -> kcat
	topic2 := "kcat-out-" + mq.NewID()
	m := &mq.Message{Key: "cust-1", Body: []byte("hi kcat"), Headers: map[string]string{"h1": "v1"}}
	if err := c.Producer().Produce(ctx, topic2, m); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, kcat, "-b", b.Addr, "-t", topic2, "-C", "-c", "1", "-e", "-f", "key=%k body=%s headers=%h\n").CombinedOutput()
	if err != nil {
		t.Fatalf("kcat -C: %v\n%s", err, out)
	}
	for _, want := range []string{"key=cust-1", "body=hi kcat", "h1=v1", kafka.HeaderID + "=" + m.ID} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("kcat read %q, missing %q", out, want)
		}
	}
}
