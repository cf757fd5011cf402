package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

// producer pipelines messages through one sarama AsyncProducer and routes
// each acknowledgement back to the Send call that is waiting for it.
//
// sarama closes the AsyncProducer's input channel when it shuts down, so a
// send on it racing close would panic. Hand-offs therefore hold mu for
// reading and give up as soon as closing is closed; close closes closing,
// takes mu for writing (waiting for hand-offs in progress to stop) and only
// then shuts sarama down.
type producer struct {
	ap      sarama.AsyncProducer
	done    chan struct{} // closed when the result loop has drained
	closing chan struct{} // closed when close begins
	mu      sync.RWMutex  // read: a hand-off to ap.Input is in progress; write: close
	once    sync.Once
}

// batch is one Send call waiting for its messages' acknowledgements.
type batch struct {
	mu        sync.Mutex
	remaining int
	errs      []error
	done      chan struct{}
}

func (b *batch) finish(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil && len(b.errs) < 10 {
		b.errs = append(b.errs, err)
	}
	b.remaining--
	if b.remaining == 0 {
		close(b.done)
	}
}

func (b *batch) err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return errors.Join(b.errs...)
}

func (c *Conn) producer() (*producer, error) {
	c.prodOnce.Do(func() {
		ap, err := sarama.NewAsyncProducerFromClient(c.client)
		if err != nil {
			c.prodErr = fmt.Errorf("kafka: producer: %w", err)
			return
		}
		p := &producer{ap: ap, done: make(chan struct{}), closing: make(chan struct{})}
		go p.results()
		c.prod = p
	})
	return c.prod, c.prodErr
}

// results hands every success and error to its batch. It ends when the
// producer is closed and both channels are drained.
func (p *producer) results() {
	defer close(p.done)
	succ, errs := p.ap.Successes(), p.ap.Errors()
	for succ != nil || errs != nil {
		select {
		case m, ok := <-succ:
			if !ok {
				succ = nil
				continue
			}
			m.Metadata.(*batch).finish(nil)
		case e, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			e.Msg.Metadata.(*batch).finish(produceError(e))
		}
	}
}

func produceError(e *sarama.ProducerError) error {
	id := ""
	for _, h := range e.Msg.Headers {
		if string(h.Key) == HeaderID {
			id = string(h.Value)
		}
	}
	err := e.Err
	switch {
	case errors.Is(err, sarama.ErrMessageSizeTooLarge), errors.Is(err, sarama.ErrMessageTooLarge):
		err = fmt.Errorf("%w: %w", mq.ErrMessageTooLarge, err)
	case errors.Is(err, sarama.ErrUnknownTopicOrPartition):
		err = fmt.Errorf("%w: %w", ErrNoTopic, err)
	default:
		err = classify(err)
	}
	return fmt.Errorf("message %s to %s: %w", id, e.Msg.Topic, err)
}

// close shuts the producer down once no hand-off is in progress, and waits
// until sarama reported the outcome of every message it was handed.
func (p *producer) close() error {
	p.once.Do(func() {
		close(p.closing)
		p.mu.Lock() // hand-offs in progress see closing and return
		p.ap.AsyncClose()
		p.mu.Unlock()
		<-p.done
	})
	return nil
}

// hand gives pms to sarama in order. It returns how many it handed over
// and, when it stopped early, why: ctx ended or the producer is closing
// (an error wrapping mq.ErrClosed).
func (p *producer) hand(ctx context.Context, pms []sarama.ProducerMessage) (int, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	select {
	case <-p.closing:
		return 0, mq.ErrClosed
	default:
	}
	for i := range pms {
		select {
		case p.ap.Input() <- &pms[i]:
		case <-p.closing:
			return i, mq.ErrClosed
		case <-ctx.Done():
			return i, ctx.Err()
		}
	}
	return len(pms), nil
}

// isTombstone reports whether m asks for a tombstone (a null value) with
// the header HeaderTombstone. Its value must be "true" and the body empty.
func isTombstone(m *mq.Message) (bool, error) {
	v, ok := m.Headers[HeaderTombstone]
	switch {
	case !ok:
		return false, nil
	case v != "true":
		return false, fmt.Errorf("%w: message %s: header %s=%q: want \"true\" (or no such header)", mq.ErrInvalidMessage, m.ID, HeaderTombstone, v)
	case len(m.Body) > 0:
		return false, fmt.Errorf("%w: message %s: a tombstone (header %s) has no body, got %d bytes", mq.ErrInvalidMessage, m.ID, HeaderTombstone, len(m.Body))
	}
	return true, nil
}

// Send produces msgs and waits until all of them are acknowledged by all
// in-sync replicas. An empty Body is written as an empty value, a message
// whose header HeaderTombstone is "true" as a tombstone (a null value).
// If ctx ends first, Send returns its error while the messages may still
// be written. Send during or after Close returns an
// error wrapping mq.ErrClosed (the messages it handed to sarama before
// Close began may still be written: the error says how many); an outage of
// the cluster gives an error wrapping mq.ErrUnavailable.
func (c *Conn) Send(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	if err := c.ensureTopic(ctx, topic); err != nil {
		return err
	}
	_, err := c.writeRecords(ctx, "produce to", topic, msgs, func(int) string { return topic })
	return err
}

// writeRecords hands msgs to the producer, message i as a record of
// dest(i), and waits until all are acknowledged; Send and Schedule use it.
// Errors of handing over and of ctx say what ("produce to", "schedule
// to") and topic; a failure of the records themselves is returned as the
// batch gives it, with answered true (the broker answered every record).
func (c *Conn) writeRecords(ctx context.Context, what, topic string, msgs []*mq.Message, dest func(i int) string) (answered bool, err error) {
	p, err := c.producer()
	if err != nil {
		return false, classify(err)
	}
	limit := c.cfg.maxMessageBytes()
	b := &batch{remaining: len(msgs), done: make(chan struct{})}
	pms := make([]sarama.ProducerMessage, len(msgs))
	for i, m := range msgs {
		pms[i].Metadata = b
		if err := fillRecord(&pms[i], dest(i), m, limit); err != nil {
			return false, err
		}
	}
	if n, err := p.hand(ctx, pms); err != nil {
		// The rest were never handed over: count them as finished so the
		// batch's bookkeeping stays right for the ones in flight.
		for range pms[n:] {
			b.finish(err)
		}
		return false, fmt.Errorf("kafka: %s %q: %w (%d of %d messages handed to the producer may still be written)", what, topic, err, n, len(pms))
	}
	select {
	case <-b.done:
		return true, b.err()
	case <-ctx.Done():
		return false, fmt.Errorf("kafka: %s %q: %w (the messages may still be written)", what, topic, ctx.Err())
	}
}

// fillRecord makes pm the Kafka record of m on topic: key, value (null
// only for a tombstone asked for with HeaderTombstone), the mq-id header
// and the other headers. It fails, before anything is sent, for a record
// over limit bytes.
func fillRecord(pm *sarama.ProducerMessage, topic string, m *mq.Message, limit int) error {
	pm.Topic = topic
	if m.Key != "" {
		pm.Key = sarama.StringEncoder(m.Key)
	}
	tomb, err := isTombstone(m)
	if err != nil {
		return err
	}
	if !tomb {
		// A non-nil slice even for an empty Body: sarama writes a nil
		// value as null, a tombstone. sarama may still hold the message
		// if ctx ends early; the copy lets the caller reuse Body once
		// Send returns.
		pm.Value = sarama.ByteEncoder(append(make([]byte, 0, len(m.Body)), m.Body...))
	}
	pm.Headers = make([]sarama.RecordHeader, 0, len(m.Headers)+1)
	pm.Headers = append(pm.Headers, sarama.RecordHeader{Key: []byte(HeaderID), Value: []byte(m.ID)})
	for k, v := range m.Headers {
		if k == HeaderID || k == HeaderTombstone {
			continue
		}
		pm.Headers = append(pm.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	if n := pm.ByteSize(2); n > limit {
		return fmt.Errorf("%w: message %s is %d bytes as a Kafka record, the limit is %d (message_max_bytes)", mq.ErrMessageTooLarge, m.ID, n, limit)
	}
	return nil
}
