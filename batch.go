package mq

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds batch consume: a BatchHandler gets many messages in one
// call (a bulk insert, a bulk API request) and says per message which
// failed, and Batch turns it into an ordinary Handler, so the consumer's
// per-key order, redelivery, ownership and shutdown, and per-message
// middleware (retry, dedup, dead-lettering) work as for single messages.

// BatchHandler processes several messages in one call. Returning nil
// acknowledges all of them; a *BatchError says which failed (only those
// come back, with Attempt one higher); any other error fails them all.
//
// A batch never holds two messages with the same non-empty key, and a
// key's next message comes only after the batch holding its previous one
// returned: per-key order is kept across batches. The handler must not
// keep the messages, or their bodies, after it returns.
type BatchHandler interface {
	HandleBatch(ctx context.Context, msgs []*Message) error
}

// BatchHandlerFunc adapts a function to a BatchHandler.
type BatchHandlerFunc func(ctx context.Context, msgs []*Message) error

// HandleBatch calls f(ctx, msgs).
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, msgs []*Message) error {
	return f(ctx, msgs)
}

// BatchError is what a BatchHandler returns when some messages of the
// batch failed and others did not.
type BatchError struct {
	// Errs has one entry per message of the batch, in order: nil for a
	// message that succeeded. An Errs shorter than the batch leaves the
	// messages past its end succeeded.
	Errs []error
}

// Error counts the failures and shows the first.
func (e *BatchError) Error() string {
	n := 0
	var first error
	for _, err := range e.Errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	return fmt.Sprintf("mq: %d of the batch's messages failed; first: %v", n, first)
}

// BatchOptions configures Batch.
type BatchOptions struct {
	// Size is the most messages per call. Default 100. A batch fills
	// only with messages handed to the handler at once: run the consumer
	// with WithConcurrency(Size) (or more) for full batches.
	Size int
	// Linger is how long the first message of a batch waits for more
	// before the batch is handled anyway. Default 5ms.
	Linger time.Duration
}

// Batch returns a Handler that gathers the messages the consumer hands it
// concurrently into batches of up to o.Size (waiting at most o.Linger for
// a batch to fill) and calls h once per batch. Each message's Handle call
// returns that message's own result, so middleware outside Batch works
// per message: mq.Chain(mq.Batch(h, o), dlqMW, retryMW) retries and
// dead-letters only the messages that failed.
//
// The context given to h carries the values of the batch's first
// message's context and is cancelled once every message's context is:
// when the consumer's shutdown timeout passes, or when all of them were
// lost to another member. A message whose own context ends while its
// batch runs (its partition was revoked, say) is not acknowledged; h may
// still see it. It returns at once, except the batch's first message,
// whose Handle call runs the batch and returns when h does. A panic in h
// fails every message of the batch with a *PanicError and is logged once
// through the client's logger (WithLogger). Give each
// consumer its own Batch: one shared by two consumers would mix their
// messages in one batch.
func Batch(h BatchHandler, o BatchOptions) Handler {
	if o.Size <= 0 {
		o.Size = 100
	}
	if o.Linger <= 0 {
		o.Linger = 5 * time.Millisecond
	}
	return &batcher{h: h, o: o}
}

type batcher struct {
	h BatchHandler
	o BatchOptions

	mu  sync.Mutex
	cur *batch // collecting; nil when none is
}

// batch is one call of the BatchHandler in the making. The first message's
// Handle call (the leader) runs it; the others wait for done.
type batch struct {
	msgs []*Message
	ctxs []context.Context
	full chan struct{} // closed when the batch reached Size
	done chan struct{} // closed when errs is set
	errs []error
}

func (b *batcher) Handle(ctx context.Context, m *Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	bt := b.cur
	leader := bt == nil
	if leader {
		bt = &batch{
			msgs: make([]*Message, 0, b.o.Size),
			ctxs: make([]context.Context, 0, b.o.Size),
			full: make(chan struct{}),
			done: make(chan struct{}),
		}
		b.cur = bt
	}
	i := len(bt.msgs)
	bt.msgs = append(bt.msgs, m)
	bt.ctxs = append(bt.ctxs, ctx)
	if len(bt.msgs) == b.o.Size {
		b.cur = nil
		close(bt.full)
	}
	b.mu.Unlock()

	if !leader {
		select {
		case <-bt.done:
			return bt.errs[i]
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	t := time.NewTimer(b.o.Linger)
	select {
	case <-bt.full:
	case <-t.C:
	case <-ctx.Done(): // run what there is: the others wait for it
	}
	t.Stop()
	b.mu.Lock()
	if b.cur == bt {
		b.cur = nil
	}
	b.mu.Unlock()
	b.run(bt)
	if err := ctx.Err(); err != nil {
		return err
	}
	return bt.errs[0]
}

// run calls the handler for bt, sets bt.errs and closes bt.done. No
// message joins bt any more.
func (b *batcher) run(bt *batch) {
	n := len(bt.msgs)
	bt.errs = make([]error, n)
	defer close(bt.done)

	ctx, cancel := context.WithCancel(context.WithoutCancel(bt.ctxs[0]))
	defer cancel()
	var live atomic.Int64
	live.Store(int64(n))
	stops := make([]func() bool, n)
	for i, c := range bt.ctxs {
		stops[i] = context.AfterFunc(c, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()

	err := b.call(ctx, bt.msgs)
	if err == nil {
		return
	}
	var be *BatchError
	if errors.As(err, &be) {
		if be != nil { // a typed nil *BatchError: nothing failed
			copy(bt.errs, be.Errs)
		}
		return
	}
	for i := range bt.errs {
		bt.errs[i] = err
	}
}

func (b *batcher) call(ctx context.Context, msgs []*Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			pe := &PanicError{Value: r, Stack: debug.Stack()}
			// One line per batch; its messages fail with pe, which the
			// consumer does not log again (it is an error, not a panic,
			// by the time their Handle calls return).
			LoggerFrom(ctx).Error("mq: batch handler panicked", "messages", len(msgs), "first_id", msgs[0].ID,
				"topic", msgs[0].Topic, "panic", fmt.Sprint(r), "stack", string(pe.Stack))
			err = pe
		}
	}()
	return b.h.HandleBatch(ctx, msgs)
}
