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
type producer struct {
	ap   sarama.AsyncProducer
	done chan struct{} // closed when the result loop has drained
	once sync.Once
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
		p := &producer{ap: ap, done: make(chan struct{})}
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
	case errors.Is(err, sarama.ErrShuttingDown):
		err = fmt.Errorf("%w: %w", mq.ErrClosed, err)
	}
	return fmt.Errorf("message %s to %s: %w", id, e.Msg.Topic, err)
}

func (p *producer) close() error {
	var err error
	p.once.Do(func() {
		p.ap.AsyncClose()
		<-p.done
	})
	return err
}

// Send produces msgs and waits until all of them are acknowledged by all
// in-sync replicas. If ctx ends first, Send returns its error while the
// messages may still be written.
func (c *Conn) Send(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	if err := c.ensureTopic(ctx, topic); err != nil {
		return err
	}
	p, err := c.producer()
	if err != nil {
		return err
	}
	limit := c.cfg.maxMessageBytes()
	b := &batch{remaining: len(msgs), done: make(chan struct{})}
	pms := make([]sarama.ProducerMessage, len(msgs))
	for i, m := range msgs {
		pm := &pms[i]
		pm.Topic = topic
		pm.Metadata = b
		if m.Key != "" {
			pm.Key = sarama.StringEncoder(m.Key)
		}
		// sarama may still hold the message if ctx ends early; give it a
		// copy so the caller may reuse Body once Send returns.
		pm.Value = sarama.ByteEncoder(append([]byte(nil), m.Body...))
		pm.Headers = make([]sarama.RecordHeader, 0, len(m.Headers)+1)
		pm.Headers = append(pm.Headers, sarama.RecordHeader{Key: []byte(HeaderID), Value: []byte(m.ID)})
		for k, v := range m.Headers {
			if k == HeaderID {
				continue
			}
			pm.Headers = append(pm.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
		if n := pm.ByteSize(2); n > limit {
			return fmt.Errorf("%w: message %s is %d bytes as a Kafka record, the limit is %d (message_max_bytes)", mq.ErrMessageTooLarge, m.ID, n, limit)
		}
	}
	for i := range pms {
		select {
		case p.ap.Input() <- &pms[i]:
		case <-ctx.Done():
			// The rest were never handed over: count them as finished so
			// the batch's bookkeeping stays right for the ones in flight.
			for range pms[i:] {
				b.finish(ctx.Err())
			}
			return fmt.Errorf("kafka: produce to %q: %w (%d of %d messages handed to the producer may still be written)", topic, ctx.Err(), i, len(pms))
		}
	}
	select {
	case <-b.done:
		return b.err()
	case <-ctx.Done():
		return fmt.Errorf("kafka: produce to %q: %w (the messages may still be written)", topic, ctx.Err())
	}
}
