package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/backoff"
)

// Delayed delivery (mq.Scheduler) keeps a waiting message in "level
// topics" of its topic, each holding records that wait exactly one level
// duration, and moves it through them with a relay (delay_relay.go).
// Scheduled, which reads the level topics, is in delay_stats.go. See
// "Delayed delivery" in the package documentation.

// delayGranularity is the shortest level: a message with less than this
// left waits in level 0 (no level wait) until it is due.
const delayGranularity = 100 * time.Millisecond

// delayLevels counts the level topics a topic can have: level 0 waits
// nothing, level i >= 1 waits delayGranularity << (i-1), up to level 29
// (about 311 days), the largest not over mq.MaxDelay.
const delayLevels = 30

// delayRelayGroup is the consumer group of the relay that moves topic's
// delayed messages.
func delayRelayGroup(topic string) string { return "mq-delay." + topic }

// levelDuration is how long a record waits in level i.
func levelDuration(i int) time.Duration {
	if i <= 0 {
		return 0
	}
	return delayGranularity << (i - 1)
}

// levelFor returns the level a message with remaining delay r goes to: the
// longest level not over r (level 0 below delayGranularity).
func levelFor(r time.Duration) int {
	if r < delayGranularity {
		return 0
	}
	return min(bits.Len64(uint64(r/delayGranularity)), delayLevels-1)
}

// levelTopic names level i of topic: "<topic>.mq-delay-<milliseconds>ms".
func levelTopic(topic string, i int) string {
	return topic + ".mq-delay-" + strconv.FormatInt(levelDuration(i).Milliseconds(), 10) + "ms"
}

// levelRetention is how long a level topic keeps its records: the level
// duration and a week on top, for relays that are down for a while.
func levelRetention(i int) time.Duration { return levelDuration(i) + 7*24*time.Hour }

// deliverAtOf reads the due time of a record from its HeaderDeliverAt
// header.
func deliverAtOf(r *sarama.ConsumerMessage) (time.Time, bool) {
	for i := len(r.Headers) - 1; i >= 0; i-- { // the last one wins, as in fillMessage
		h := r.Headers[i]
		if h != nil && string(h.Key) == mq.HeaderDeliverAt {
			t, err := time.Parse(time.RFC3339Nano, string(h.Value))
			return t, err == nil
		}
	}
	return time.Time{}, false
}

// delayState is a Conn's delayed-delivery state: the level topics known
// to exist and the relays its subscriptions run.
type delayState struct {
	mu     sync.Mutex
	closed bool
	known  map[string]int    // topic -> highest level i such that levels 0..i exist
	relays map[string]*relay // by topic; refcounted by subscriptions

	// The poller looks up, once a second (or at once when woken), which
	// level topics of the relayed topics exist, and tells the relays. It
	// runs from the first relay until Conn.Close.
	polling bool
	wake    chan struct{} // buffered(1)
	stop    chan struct{} // closed by close
	polled  chan struct{} // closed when the poller returned
}

// delayPollInterval is how often a Conn with relays looks for level
// topics that other processes created.
const delayPollInterval = time.Second

// Schedule implements mq.Scheduler: each message is written to the level
// topic of its remaining delay, from where the relays of the topic's
// subscriptions move it on, and into topic when due. It returns once the
// broker has acknowledged all of them (acks=all), as Send does.
func (c *Conn) Schedule(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	if err := c.delayCheck(topic); err != nil {
		return err
	}
	if err := c.ensureTopic(ctx, topic); err != nil {
		return err
	}
	now := time.Now()
	levels := make([]int, len(msgs))
	top := 0
	for i, m := range msgs {
		levels[i] = levelFor(m.DeliverAt.Sub(now))
		top = max(top, levels[i])
	}
	if err := c.ensureLevels(ctx, topic, top); err != nil {
		return err
	}
	// Making level topics takes a while: choose again with what is left
	// now (never a longer level, so one that exists).
	now = time.Now()
	for i, m := range msgs {
		levels[i] = levelFor(m.DeliverAt.Sub(now))
	}
	answered, err := c.writeRecords(ctx, "schedule to", topic, msgs, func(i int) string { return levelTopic(topic, levels[i]) })
	if answered && err != nil {
		return fmt.Errorf("kafka: schedule to %q: %w", topic, err)
	}
	return err
}

// delayCheck says whether topic can have delayed messages on this Conn.
func (c *Conn) delayCheck(topic string) error {
	if !c.sc.Version.IsAtLeast(sarama.V2_5_0_0) {
		return fmt.Errorf("%w: kafka delayed delivery moves messages in transactions that need protocol version 2.5 or later (version=%s)", mq.ErrDelayUnsupported, c.sc.Version)
	}
	if n := len(levelTopic(topic, delayLevels-1)); n > 249 {
		return fmt.Errorf("%w: topic name %q too long for delayed delivery: its level topics (%s) would have %d characters, Kafka allows 249", mq.ErrInvalidMessage, topic, levelTopic(topic, delayLevels-1), n)
	}
	return nil
}

// ensureLevels makes sure levels 0..top of topic exist, creating the
// missing ones (whatever Config.CreateTopics says: they are this
// package's own, as a consumer group's offsets are). The relays of this
// Conn hear of new ones at once; those of other processes within
// delayPollInterval.
func (c *Conn) ensureLevels(ctx context.Context, topic string, top int) error {
	d := &c.delay
	d.mu.Lock()
	k, ok := d.known[topic]
	d.mu.Unlock()
	if ok && k >= top {
		return nil
	}
	exist, err := c.levelTopics([]string{topic})
	if err != nil {
		return err
	}
	have := exist[topic]
	var missing []int
	for i := 0; i <= top; i++ {
		if !slices.Contains(have, i) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		d.mu.Lock()
		if r := d.relays[topic]; r != nil {
			r.prepareMember() // while the topics are made
		}
		d.mu.Unlock()
		if err := c.createLevels(ctx, topic, missing); err != nil {
			return err
		}
	}
	d.mu.Lock()
	if d.known == nil {
		d.known = map[string]int{}
	}
	if cur, ok := d.known[topic]; !ok || cur < top {
		d.known[topic] = top
	}
	d.mu.Unlock()
	c.topicsMu.Lock()
	for i := 0; i <= top; i++ {
		c.topics[levelTopic(topic, i)] = true
	}
	c.topicsMu.Unlock()
	if len(missing) > 0 {
		d.pollNow()
	}
	return nil
}

// createLevels creates the given level topics of topic with one
// partition each (relays share a topic's levels between them; more
// partitions would only add requests, transaction markers and session
// set-up work), the replication of created topics
// (Config.ReplicationFactor), records stamped by the broker
// (message.timestamp.type=LogAppendTime: a record is due at its level
// when its append time plus the level duration has passed, which grows
// along a partition), deletion only (never compaction, which would drop
// waiting messages of one key) and a retention of the level duration
// plus a week. It returns once all of them are visible in the metadata.
func (c *Conn) createLevels(ctx context.Context, topic string, levels []int) error {
	details := make(map[string]*sarama.TopicDetail, len(levels))
	for _, i := range levels {
		detail := c.topicDetail(1, c.cfg.ReplicationFactor)
		if detail.ConfigEntries == nil {
			detail.ConfigEntries = map[string]*string{}
		}
		appendTime, deletion := "LogAppendTime", "delete"
		retention := strconv.FormatInt(levelRetention(i).Milliseconds(), 10)
		detail.ConfigEntries["message.timestamp.type"] = &appendTime
		detail.ConfigEntries["cleanup.policy"] = &deletion
		detail.ConfigEntries["retention.ms"] = &retention
		details[levelTopic(topic, i)] = detail
	}
	// One request for all of them (the admin client's CreateTopic takes
	// one topic a request, and requests to a broker go one at a time).
	req := sarama.NewCreateTopicsRequest(c.sc.Version, details, c.sc.Admin.Timeout, false)
	for attempt := 1; ; attempt++ {
		err := c.createTopics(req)
		if err == nil {
			break
		}
		if !errors.Is(err, sarama.ErrNotController) && !errors.Is(err, io.EOF) || attempt == 5 {
			return classify(fmt.Errorf("kafka: create delay level topics of %q: %w", topic, err))
		}
		_, _ = c.client.RefreshController()
		if !backoff.Sleep(ctx, time.Duration(attempt)*100*time.Millisecond, nil) {
			return ctx.Err()
		}
	}
	for {
		exist, err := c.levelTopics([]string{topic})
		if err == nil {
			all := true
			for _, i := range levels {
				all = all && slices.Contains(exist[topic], i)
			}
			if all {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka: waiting for new delay level topics of %q: %w", topic, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// createTopics sends req to the controller. A topic that exists already
// is not an error.
func (c *Conn) createTopics(req *sarama.CreateTopicsRequest) error {
	b, err := c.client.Controller()
	if err != nil {
		return err
	}
	resp, err := b.CreateTopics(req)
	if err != nil {
		return err
	}
	for name := range req.TopicDetails {
		te, ok := resp.TopicErrors[name]
		switch {
		case !ok:
			return sarama.ErrIncompleteResponse
		case te.Err != sarama.ErrNoError && te.Err != sarama.ErrTopicAlreadyExists:
			return fmt.Errorf("%s: %w", name, te)
		}
	}
	return nil
}

// levelTopics returns, for each of topics, the levels whose topics exist
// (ascending), with one metadata request for all of them.
func (c *Conn) levelTopics(topics []string) (map[string][]int, error) {
	names := make([]string, 0, len(topics)*delayLevels)
	for _, t := range topics {
		for i := range delayLevels {
			names = append(names, levelTopic(t, i))
		}
	}
	b := c.client.LeastLoadedBroker()
	if b == nil {
		return nil, classify(fmt.Errorf("kafka: metadata of delay level topics: %w", sarama.ErrOutOfBrokers))
	}
	_ = b.Open(c.client.Config()) // a no-op when connected
	resp, err := b.GetMetadata(sarama.NewMetadataRequest(c.sc.Version, names))
	if err != nil {
		_ = b.Close() // reconnect next time
		return nil, classify(fmt.Errorf("kafka: metadata of delay level topics: %w", err))
	}
	exists := make(map[string]bool, len(resp.Topics))
	for _, t := range resp.Topics {
		switch {
		case t.Err == sarama.ErrNoError && len(t.Partitions) > 0, t.Err == sarama.ErrLeaderNotAvailable:
			exists[t.Name] = true
		}
	}
	out := make(map[string][]int, len(topics))
	for _, t := range topics {
		for i := range delayLevels {
			if exists[levelTopic(t, i)] {
				out[t] = append(out[t], i)
			}
		}
	}
	return out, nil
}

// acquireRelay starts topic's relay on this Conn, or counts one more user
// of the running one. It reports false once the Conn is closed.
func (c *Conn) acquireRelay(topic string) bool {
	d := &c.delay
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	if r := d.relays[topic]; r != nil {
		r.refs++
		return true
	}
	if d.relays == nil {
		d.relays = map[string]*relay{}
	}
	r := newRelay(c, topic)
	r.refs = 1
	d.relays[topic] = r
	if !d.polling {
		d.polling = true
		d.wake = make(chan struct{}, 1)
		d.stop = make(chan struct{})
		d.polled = make(chan struct{})
		go d.poll(c)
	}
	r.start()
	d.pollNowLocked()
	return true
}

// releaseRelay counts one user of topic's relay less and, when that was
// the last, begins stopping it. The function it returns waits until the
// relay stopped (at once when it was not the last user).
func (c *Conn) releaseRelay(topic string) (wait func()) {
	d := &c.delay
	d.mu.Lock()
	r := d.relays[topic]
	if r == nil {
		d.mu.Unlock()
		return func() {}
	}
	r.refs--
	if r.refs > 0 {
		d.mu.Unlock()
		return func() {}
	}
	delete(d.relays, topic)
	d.mu.Unlock()
	r.cancel()
	return r.stop
}

// close stops every relay and the poller, and waits for them. Later
// acquireRelay calls fail.
func (d *delayState) close() {
	d.mu.Lock()
	d.closed = true
	rs := make([]*relay, 0, len(d.relays))
	for _, r := range d.relays {
		rs = append(rs, r)
	}
	clear(d.relays)
	polling := d.polling
	d.mu.Unlock()
	for _, r := range rs {
		r.cancel() // all at once; then wait for each
	}
	for _, r := range rs {
		r.stop()
	}
	if polling {
		close(d.stop)
		<-d.polled
	}
}

// pollNow makes the poller look for level topics at once.
func (d *delayState) pollNow() {
	d.mu.Lock()
	d.pollNowLocked()
	d.mu.Unlock()
}

func (d *delayState) pollNowLocked() {
	if d.polling {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// poll tells each relay which level topics of its topic exist, once a
// second and whenever woken, until close.
func (d *delayState) poll(c *Conn) {
	defer close(d.polled)
	tick := time.NewTicker(delayPollInterval)
	defer tick.Stop()
	for {
		d.mu.Lock()
		topics := make([]string, 0, len(d.relays))
		for t := range d.relays {
			topics = append(topics, t)
		}
		d.mu.Unlock()
		if len(topics) > 0 {
			if exist, err := c.levelTopics(topics); err == nil {
				d.mu.Lock()
				for t, r := range d.relays {
					r.setLevels(exist[t])
				}
				d.mu.Unlock()
			}
		}
		select {
		case <-d.stop:
			return
		case <-d.wake:
		case <-tick.C:
		}
	}
}

var _ mq.Scheduler = (*Conn)(nil)
