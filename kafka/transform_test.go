package kafka_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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

const (
	eosInputs = 2000 // inputs produced
	eosKills  = 3    // child processes SIGKILLed mid-stream before the last one finishes
)

// TestTransformExactlyOnce runs a consume-transform-produce pipeline in a
// child process, SIGKILLs it mid-stream eosKills times, restarting it each
// time, and then reads the output topic with read_committed: with
// kafka.Transform every input has exactly one output. The same pipeline on
// the at-least-once path (consume, produce, ack) is run too, and its
// duplicates counted, to show the check can see them.
func TestTransformExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker and kills child processes; skipped with -short")
	}
	b := testbed.Kafka(t, testbed.WithEnv("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "1"))
	u := b.URL + "/?create_topics=true&partitions=4&session_timeout=6s&drain_timeout=2s"

	t.Run("Transform", func(t *testing.T) {
		counts := crashLoop(t, u, "eos")
		missing, dups := tally(counts)
		t.Logf("transform: %d inputs, %d distinct outputs, %d duplicates, %d missing, %d kills", eosInputs, len(counts), dups, missing, eosKills)
		if dups != 0 || missing != 0 || len(counts) != eosInputs {
			t.Errorf("exactly-once broken: %d duplicates, %d missing, %d distinct outputs of %d inputs", dups, missing, len(counts), eosInputs)
		}
	})
	t.Run("PermanentErrorEnds", func(t *testing.T) { testTransformPermanent(t, u) })
	t.Run("DeliveryHeaders", func(t *testing.T) { testTransformDeliveryHeaders(t, u) })
	t.Run("AtLeastOnce", func(t *testing.T) {
		counts := crashLoop(t, u, "plain")
		missing, dups := tally(counts)
		t.Logf("consume+produce+ack: %d inputs, %d distinct outputs, %d duplicates, %d missing, %d kills", eosInputs, len(counts), dups, missing, eosKills)
		if missing != 0 {
			t.Errorf("at-least-once lost %d outputs", missing)
		}
		if dups == 0 {
			t.Log("no duplicates this time: every kill landed just after an offset commit")
		}
	})
}

// testTransformPermanent checks that a permanent error from the
// TransformFunc ends Transform with that error, and commits nothing.
func testTransformPermanent(t *testing.T, u string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in := "eos-perm-" + mq.NewID()
	if err := c.Producer().Produce(ctx, in, &mq.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	k, _ := kafka.FromClient(c)
	bad := errors.New("cannot transform")
	err = kafka.Transform(ctx, k, kafka.TransformConfig{Topic: in, Group: "g-" + in, TransactionalID: "perm-" + in},
		func(context.Context, *mq.Message) ([]kafka.Output, error) { return nil, mq.Permanent(bad) })
	if !errors.Is(err, bad) {
		t.Fatalf("Transform = %v, want the permanent error", err)
	}
	lag, err := k.Lag(ctx, in, "g-"+in)
	if err != nil {
		t.Fatal(err)
	}
	if lag[0].Committed >= 0 {
		t.Errorf("committed offset %d after a failed transform, want none", lag[0].Committed)
	}
}

// testTransformDeliveryHeaders checks that Transform reads the SDK's
// delivery headers as a consumer does (another group's RetryLater copy is
// skipped, earlier attempts count in Attempt, the headers are gone) and
// that an output with DeliverAt is delayed, not written at once.
func testTransformDeliveryHeaders(t *testing.T, u string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in, out := "eos-hdr-"+mq.NewID(), "eos-hdr-out-"+mq.NewID()
	group := "g-" + in
	msgs := []*mq.Message{
		{ID: "plain", Body: []byte("a")},
		{ID: "other-group", Headers: map[string]string{mq.HeaderForGroup: "someone-else"}, Body: []byte("b")},
		{ID: "retried", Headers: map[string]string{mq.HeaderForGroup: group, mq.HeaderAttemptsBefore: "2", "app": "kept"}, Body: []byte("c")},
	}
	if err := c.Producer().Produce(ctx, in, msgs...); err != nil {
		t.Fatal(err)
	}
	k, _ := kafka.FromClient(c)
	var mu sync.Mutex
	seen := map[string]*mq.Message{}
	delay := 2 * time.Second
	var due time.Time
	tctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- kafka.Transform(tctx, k, kafka.TransformConfig{Topic: in, Group: group, TransactionalID: "hdr-" + in},
			func(_ context.Context, m *mq.Message) ([]kafka.Output, error) {
				mu.Lock()
				defer mu.Unlock()
				seen[m.ID] = m
				o := &mq.Message{ID: "out-" + m.ID, Body: m.Body}
				if m.ID == "plain" {
					due = time.Now().Add(delay)
					o.DeliverAt = due
				}
				return []kafka.Output{{Topic: out, Message: o}}, nil
			})
	}()

	// Read the outputs with an ordinary consumer (which also runs the
	// topic's delay relay).
	cons, err := c.Consumer(ctx, out, mq.WithGroup("reader"))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *mq.Message, 10)
	arrived := map[string]time.Time{}
	cctx, cstop := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
			got <- m
			return nil
		}))
	}()
	outs := map[string]*mq.Message{}
	for len(outs) < 2 {
		select {
		case m := <-got:
			outs[m.ID] = m
			arrived[m.ID] = time.Now()
		case <-ctx.Done():
			t.Fatalf("outputs received: %v; want out-plain and out-retried", keys(outs))
		}
	}
	cstop()
	<-consumed
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Transform: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if _, ok := seen["other-group"]; ok {
		t.Error("Transform handed another group's retry copy to fn")
	}
	if r := seen["retried"]; r == nil {
		t.Error("fn never saw the retried message")
	} else {
		if r.Attempt != 3 {
			t.Errorf("retried message: Attempt %d, want 3 (2 before + this one)", r.Attempt)
		}
		if len(r.Headers) != 1 || r.Headers["app"] != "kept" {
			t.Errorf("retried message: headers %v, want only app=kept (the SDK's headers taken off)", r.Headers)
		}
	}
	if _, ok := outs["out-other-group"]; ok {
		t.Error("an output was written for another group's message")
	}
	p := outs["out-plain"]
	if p == nil {
		t.Fatal("no delayed output")
	}
	if arrived["out-plain"].Before(due) {
		t.Errorf("delayed output arrived %v before its DeliverAt", due.Sub(arrived["out-plain"]))
	}
	if !p.DeliverAt.Equal(due) {
		t.Errorf("delayed output: DeliverAt %v, want %v", p.DeliverAt, due)
	}
	if _, ok := p.Headers[mq.HeaderDeliverAt]; ok {
		t.Errorf("delayed output still carries %s", mq.HeaderDeliverAt)
	}
	t.Logf("delayed output due %v after it was made, arrived %v after its due time", delay, arrived["out-plain"].Sub(due).Round(time.Millisecond))
}

func keys(m map[string]*mq.Message) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestTransformConfigRequired checks the configuration Transform insists on.
func TestTransformConfigRequired(t *testing.T) {
	fn := func(context.Context, *mq.Message) ([]kafka.Output, error) { return nil, nil }
	for _, cfg := range []kafka.TransformConfig{
		{Group: "g", TransactionalID: "x"},
		{Topic: "t", TransactionalID: "x"},
		{Topic: "t", Group: "g"},
	} {
		if err := kafka.Transform(context.Background(), nil, cfg, fn); err == nil {
			t.Errorf("Transform(%+v) = nil, want an error", cfg)
		}
	}
	if err := kafka.Transform(context.Background(), nil, kafka.TransformConfig{Topic: "t", Group: "g", TransactionalID: "x"}, nil); err == nil {
		t.Error("Transform with a nil func = nil, want an error")
	}
}

// tally counts the expected outputs missing and the extra copies.
func tally(counts map[string]int) (missing, dups int) {
	for i := range eosInputs {
		n := counts[outID(inID(i))]
		if n == 0 {
			missing++
		} else {
			dups += n - 1
		}
	}
	return missing, dups
}

func inID(i int) string      { return fmt.Sprintf("in-%04d", i) }
func outID(in string) string { return "out-" + in }
func outMessage(in *mq.Message) *mq.Message {
	return &mq.Message{ID: outID(in.ID), Key: in.Key, Body: in.Body}
}

// crashLoop produces the inputs, runs the pipeline of mode in child
// processes (killing eosKills of them mid-stream), and returns how many
// committed copies of each output ID the output topic holds once every
// input has an output.
func crashLoop(t *testing.T, u, mode string) map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c, err := mq.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in, out := "eos-in-"+mq.NewID(), "eos-out-"+mq.NewID()
	k, _ := kafka.FromClient(c)
	for _, topic := range []string{in, out} {
		if err := k.CreateTopic(ctx, topic, 4, 1); err != nil {
			t.Fatal(err)
		}
	}
	msgs := make([]*mq.Message, eosInputs)
	for i := range msgs {
		msgs[i] = &mq.Message{ID: inID(i), Key: "k" + strconv.Itoa(i%40), Body: []byte(inID(i))}
	}
	if err := c.Producer().Produce(ctx, in, msgs...); err != nil {
		t.Fatal(err)
	}
	r := readCommitted(t, k, out)

	env := append(os.Environ(), "MQ_TRANSFORM_CHILD="+mode, "MQ_TRANSFORM_URL="+u, "MQ_TRANSFORM_IN="+in, "MQ_TRANSFORM_OUT="+out, "MQ_TRANSFORM_GROUP=g-"+in)
	for kill := range eosKills + 1 {
		child := startChild(ctx, t, env)
		if kill < eosKills {
			// Kill once this process made progress of its own (so every
			// restart commits some outputs) and is in the middle of more:
			// a transaction, or offsets not yet committed, open.
			want := (kill + 1) * eosInputs / (eosKills + 2)
			if !child.waitHandled(1, 2*time.Minute) || !r.waitDistinct(want, 2*time.Minute) {
				child.kill()
				t.Fatalf("child %d: %d distinct outputs, want %d before killing it", kill, r.distinct(), want)
			}
			child.kill()
			t.Logf("SIGKILLed child %d after it handled %d inputs; %d distinct outputs committed so far", kill, child.handled(), r.distinct())
			continue
		}
		if !r.waitDistinct(eosInputs, 3*time.Minute) {
			t.Errorf("the last child left %d inputs without output", eosInputs-r.distinct())
		}
		time.Sleep(3 * time.Second) // let late duplicates arrive
		child.kill()
	}
	return r.snapshot()
}

// child is a running pipeline process.
type child struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	n   int
	hit chan struct{} // a token per HANDLED line
	out chan struct{} // closed when stdout is drained
}

func startChild(ctx context.Context, t *testing.T, env []string) *child {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestTransformChild$", "-test.v")
	cmd.Env = env
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, hit: make(chan struct{}, 1), out: make(chan struct{})}
	go func() {
		defer close(ch.out)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "HANDLED "); ok {
				v, _ := strconv.Atoi(n)
				ch.mu.Lock()
				ch.n = v
				ch.mu.Unlock()
				select {
				case ch.hit <- struct{}{}:
				default:
				}
			}
		}
	}()
	t.Cleanup(ch.kill)
	return ch
}

func (c *child) handled() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *child) waitHandled(n int, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for c.handled() < n {
		select {
		case <-c.hit:
		case <-c.out:
			return c.handled() >= n
		case <-deadline:
			return false
		}
	}
	return true
}

// kill SIGKILLs the child and waits for it. It is idempotent.
func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.out
		_ = c.cmd.Wait()
	}
}

// reader counts the committed records of a topic by ID, reading every
// partition from the oldest offset with isolation.level=read_committed,
// outside any group (so nothing it counts is a redelivery of its own).
type reader struct {
	mu     sync.Mutex
	counts map[string]int
}

// consumePartitionRetry opens a partition from its oldest offset,
// retrying for up to 30 s while a topic just created has no leader that
// knows it is one yet (KRaft propagates leadership after CreateTopics
// returns, and a ListOffsets in between answers NOT_LEADER_OR_FOLLOWER).
func consumePartitionRetry(cons sarama.Consumer, topic string, p int32) (sarama.PartitionConsumer, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pc, err := cons.ConsumePartition(topic, p, sarama.OffsetOldest)
		retriable := errors.Is(err, sarama.ErrNotLeaderForPartition) || errors.Is(err, sarama.ErrLeaderNotAvailable) ||
			errors.Is(err, sarama.ErrUnknownTopicOrPartition) || errors.Is(err, sarama.ErrReplicaNotAvailable)
		if err == nil || !retriable || time.Now().After(deadline) {
			return pc, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readCommitted(t *testing.T, k *kafka.Conn, topic string) *reader {
	t.Helper()
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	sc.Consumer.IsolationLevel = sarama.ReadCommitted
	var addrs []string
	for _, b := range k.Sarama().Brokers() {
		addrs = append(addrs, b.Addr())
	}
	cons, err := sarama.NewConsumer(addrs, sc) // owns its client: Close closes it

	if err != nil {
		t.Fatal(err)
	}
	parts, err := cons.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	r := &reader{counts: map[string]int{}}
	var wg sync.WaitGroup
	var pcs []sarama.PartitionConsumer
	t.Cleanup(func() {
		for _, pc := range pcs {
			pc.AsyncClose() // closes Messages: the goroutines end
		}
		wg.Wait()
		_ = cons.Close()
	})
	for _, p := range parts {
		pc, err := consumePartitionRetry(cons, topic, p)
		if err != nil {
			t.Fatal(err)
		}
		pcs = append(pcs, pc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range pc.Messages() {
				id := ""
				for _, h := range m.Headers {
					if string(h.Key) == kafka.HeaderID {
						id = string(h.Value)
					}
				}
				r.mu.Lock()
				r.counts[id]++
				r.mu.Unlock()
			}
		}()
	}
	return r
}

// waitDistinct waits until at least n distinct IDs were read.
func (r *reader) waitDistinct(n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for r.distinct() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func (r *reader) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counts)
}

func (r *reader) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.counts))
	for k, v := range r.counts {
		out[k] = v
	}
	return out
}

// TestTransformChild is the pipeline process that TestTransformExactlyOnce
// starts and kills. It does nothing unless started by that test.
func TestTransformChild(t *testing.T) {
	mode := os.Getenv("MQ_TRANSFORM_CHILD")
	if mode == "" {
		return // not a test of its own
	}
	ctx := context.Background()
	in, out := os.Getenv("MQ_TRANSFORM_IN"), os.Getenv("MQ_TRANSFORM_OUT")
	c, err := mq.Open(ctx, os.Getenv("MQ_TRANSFORM_URL"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handled := 0
	count := func() {
		mu.Lock()
		handled++
		if handled%25 == 0 {
			fmt.Printf("HANDLED %d\n", handled)
		}
		mu.Unlock()
		time.Sleep(time.Millisecond) // some work, so kills land mid-batch
	}
	switch mode {
	case "eos":
		k, _ := kafka.FromClient(c)
		err = kafka.Transform(ctx, k, kafka.TransformConfig{Topic: in, Group: os.Getenv("MQ_TRANSFORM_GROUP"), TransactionalID: "eos-" + in, MaxBatch: 50},
			func(ctx context.Context, m *mq.Message) ([]kafka.Output, error) {
				count()
				return []kafka.Output{{Topic: out, Message: outMessage(m)}}, nil
			})
	case "plain":
		var cons mq.Consumer
		cons, err = c.Consumer(ctx, in, mq.WithGroup(os.Getenv("MQ_TRANSFORM_GROUP")), mq.WithConcurrency(4))
		if err != nil {
			t.Fatal(err)
		}
		err = cons.Consume(ctx, mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
			count()
			return c.Producer().Produce(ctx, out, outMessage(m))
		}))
	default:
		err = errors.New("unknown mode " + mode)
	}
	t.Fatal(err)
}
