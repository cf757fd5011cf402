package runner

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/mqkit/mq"
)

// Headers set on every output of a publishing handler, unless the
// handler set them itself.
const (
	// HeaderCausationID holds the ID of the message whose handling
	// produced this one.
	HeaderCausationID = "mq-causation-id"
	// HeaderCorrelationID holds the ID shared by every message that one
	// original message caused, directly or through other handlers: the
	// input's correlation ID, or the input's ID when it has none.
	HeaderCorrelationID = "mq-correlation-id"
)

// Publisher sends messages to topics. An mq.Producer is one; so is an
// outbox that stores the messages to be sent later, and so are the
// Outputs of a publishing handler.
type Publisher interface {
	// Produce sends msgs to topic, returning nil once they are accepted
	// (see mq.Producer.Produce). Messages without an ID get one, set in
	// place.
	Produce(ctx context.Context, topic string, msgs ...*mq.Message) error
}

// PublishFunc handles m, adding the messages its handling produces to
// out. Returning nil publishes them, then acknowledges m; returning an
// error publishes nothing and makes m come back.
type PublishFunc func(ctx context.Context, m *mq.Message, out *Outputs) error

// Publishing returns a handler that runs f and, when f returns nil,
// publishes its outputs through p before returning (see the package
// documentation for the guarantees). The outputs go out in the order they
// were added, one Produce call per run of consecutive outputs to one
// topic, with the handler's context. A failed publish returns an error
// wrapping the Publisher's (so mq.ErrUnavailable stays visible to retry
// middleware), and the message comes back to be handled again.
func Publishing(p Publisher, f PublishFunc) mq.Handler {
	return mq.HandlerFunc(func(ctx context.Context, m *mq.Message) error {
		out := &Outputs{in: m}
		err := f(ctx, m, out)
		batches := out.seal()
		if err != nil {
			return err
		}
		for _, b := range batches {
			if err := p.Produce(ctx, b.topic, b.msgs...); err != nil {
				return fmt.Errorf("runner: publish %d output(s) of %s to %q: %w", len(b.msgs), m, b.topic, err)
			}
		}
		return nil
	})
}

// Outputs collects the messages a publishing handler produces while it
// handles one input. It is safe for concurrent use by the handler's
// goroutines, and must not be used after the handler returned.
type Outputs struct {
	in *mq.Message

	mu      sync.Mutex
	n       int // IDs derived by index so far
	batches []batch
	sealed  bool
}

type batch struct {
	topic string
	msgs  []*mq.Message
}

// errSealed is returned by Outputs.Produce after the handler returned.
var errSealed = fmt.Errorf("runner: outputs used after the handler returned: %w", mq.ErrClosed)

// Produce adds msgs, to be published to topic once the handler returns
// nil. It takes ownership of them: it sets their headers and IDs (see
// AssignID), and the caller must not change them afterwards. It returns
// an error, wrapping mq.ErrInvalidMessage, for an empty topic or a nil
// message, and wrapping mq.ErrClosed after the handler returned; it sends
// nothing, so ctx is not used.
//
// With Produce, Outputs is a Publisher, so anything that produces through
// one (a typed producer, say) can add to a handler's outputs.
func (o *Outputs) Produce(_ context.Context, topic string, msgs ...*mq.Message) error {
	if topic == "" {
		return fmt.Errorf("runner: output with an empty topic name: %w", mq.ErrInvalidMessage)
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("runner: output %d to %q is nil: %w", i, topic, mq.ErrInvalidMessage)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.sealed {
		return errSealed
	}
	for _, m := range msgs {
		o.assignLocked(m)
		o.stampLocked(m)
	}
	if k := len(o.batches) - 1; k >= 0 && o.batches[k].topic == topic {
		o.batches[k].msgs = append(o.batches[k].msgs, msgs...)
	} else {
		o.batches = append(o.batches, batch{topic: topic, msgs: append([]*mq.Message(nil), msgs...)})
	}
	return nil
}

// ID returns the deterministic ID of the output called name:
// "<input ID>/<name>". Handlers whose outputs vary in number or order
// between runs set each output's ID with it, so that a run after a
// redelivery gives every output the ID it had before.
func (o *Outputs) ID(name string) string { return o.in.ID + "/" + name }

// AssignID gives m, if it has no ID, the next ID derived from the
// input's: "<input ID>/<n>", n counting from 0 the outputs that were
// given one this way. Produce calls it for every message; a producer that
// writes the ID into the message elsewhere too (a CloudEvents id) calls it
// first.
func (o *Outputs) AssignID(m *mq.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.assignLocked(m)
}

func (o *Outputs) assignLocked(m *mq.Message) {
	if m.ID != "" {
		return
	}
	m.ID = o.ID(strconv.Itoa(o.n))
	o.n++
	if o.in.Header(mq.HeaderIDNotUnique) == "true" {
		// The input's ID may be shared with other messages, and so may
		// IDs derived from it: tell dedup downstream not to trust them.
		m.SetHeader(mq.HeaderIDNotUnique, "true")
	}
}

func (o *Outputs) stampLocked(m *mq.Message) {
	if m.Header(HeaderCausationID) == "" {
		m.SetHeader(HeaderCausationID, o.in.ID)
	}
	if m.Header(HeaderCorrelationID) == "" {
		corr := o.in.Header(HeaderCorrelationID)
		if corr == "" {
			corr = o.in.ID
		}
		m.SetHeader(HeaderCorrelationID, corr)
	}
}

// seal ends the handler's use of o and returns what it added.
func (o *Outputs) seal() []batch {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sealed = true
	return o.batches
}

// Len returns how many outputs were added so far.
func (o *Outputs) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, b := range o.batches {
		n += len(b.msgs)
	}
	return n
}

var (
	_ Publisher = (*Outputs)(nil)
	_ Publisher = mq.Producer(nil)
)
