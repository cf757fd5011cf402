package mq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"
)

// This file holds delayed delivery: a message produced with DeliverAt in
// the future waits in the broker (see Scheduler) and enters its topic when
// due; and the headers with which the SDK's own re-scheduling (retry
// later) addresses one consumer group and keeps Attempt exact.

// Headers the portable layer writes and reads for delayed delivery. A
// consumer never sees them: on delivery they become Message.DeliverAt and
// Message.Attempt, and are removed, so Headers round-trip exactly.
const (
	// HeaderDeliverAt carries Message.DeliverAt on the wire, as RFC 3339
	// text with nanoseconds in UTC. Drivers read it to know when a
	// waiting message is due.
	HeaderDeliverAt = "mq-deliver-at"

	// HeaderForGroup, on a message, names the only consumer group that
	// handles it: members of other groups acknowledge it unseen. Retry
	// middleware that re-schedules a failed message through the broker
	// (middleware.RetryLater) sets it, so the retry does not reach the
	// topic's other groups.
	HeaderForGroup = "mq-for-group"

	// HeaderAttemptsBefore counts the attempts a message had before it
	// was re-scheduled as a new message: on delivery Attempt is the
	// broker's count plus this number.
	HeaderAttemptsBefore = "mq-attempts-before"
)

// ErrDelayUnsupported is returned (wrapped) by Produce for a message with
// DeliverAt in the future on a backend that cannot hold messages until a
// time (its Conn does not implement Scheduler). Nothing is sent.
var ErrDelayUnsupported = errors.New("mq: backend does not support delayed delivery")

// MaxDelay is the longest delay Produce accepts: a message with DeliverAt
// further ahead fails with ErrInvalidMessage before anything is sent.
const MaxDelay = 366 * 24 * time.Hour

// Scheduler is implemented by a Conn that can keep messages in the broker
// until they are due. Produce hands it every message whose DeliverAt is
// in the future; messages due already go to Send.
type Scheduler interface {
	// Schedule durably stores msgs for topic and returns after the broker
	// has accepted all of them, as Send does. Each message has an ID,
	// DeliverAt in the future, and the HeaderDeliverAt header. When a
	// message is due (never before DeliverAt, by the clock of the process
	// that moves it) it enters topic with its ID, Key, Headers and Body,
	// as if sent then: the groups of the topic at that time receive it.
	//
	// A waiting message lives in the broker only: a broker restart or a
	// crash of any process loses none, and it holds no consumer's memory
	// or handler slot. What moves due messages runs inside the driver's
	// connections (its subscriptions of the topic, at least) and is safe
	// with any number of them running at once.
	Schedule(ctx context.Context, topic string, msgs []*Message) error

	// Scheduled reports the messages of topic waiting to be due.
	Scheduled(ctx context.Context, topic string) (ScheduleStats, error)
}

// ScheduleStats tells what waits in the broker for one topic.
type ScheduleStats struct {
	// Waiting counts the scheduled messages not yet moved into the
	// topic; -1 when the broker cannot tell.
	Waiting int64
	// NextDue is when the next of them is due (or, where the broker
	// keeps messages in steps, when the next step ends); zero when none
	// waits or the broker cannot tell.
	NextDue time.Time
}

// DeliverAfter sets m.DeliverAt to d from now and returns m, for
// p.Produce(ctx, topic, m.DeliverAfter(time.Minute)).
func (m *Message) DeliverAfter(d time.Duration) *Message {
	m.DeliverAt = time.Now().Add(d)
	return m
}

// Scheduled reports what waits in the broker for topic: messages produced
// with DeliverAt in the future and not yet due. It fails with
// ErrDelayUnsupported when the backend has no delayed delivery.
func (c *Client) Scheduled(ctx context.Context, topic string) (ScheduleStats, error) {
	if c.isClosed() {
		return ScheduleStats{}, ErrClosed
	}
	s, ok := c.conn.(Scheduler)
	if !ok {
		return ScheduleStats{}, fmt.Errorf("%w (%s)", ErrDelayUnsupported, c.redacted)
	}
	st, err := s.Scheduled(ctx, topic)
	if err != nil {
		return ScheduleStats{}, fmt.Errorf("mq: scheduled messages of %q: %w", topic, err)
	}
	return st, nil
}

// prepareDelayed checks the DeliverAt of msgs and returns the messages to
// send: the caller's, or where a message carries DeliverAt, a copy of it
// with its own Headers holding HeaderDeliverAt (the caller's map is never
// written).
func (p *producer) prepareDelayed(msgs []*Message) (send []*Message, err error) {
	var now time.Time
	send = msgs
	copied := false
	for i, m := range msgs {
		if m.DeliverAt.IsZero() {
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		if m.DeliverAt.After(now) {
			if m.DeliverAt.Sub(now) > MaxDelay {
				return nil, fmt.Errorf("%w: message %s is due in %v, more than mq.MaxDelay (%v)", ErrInvalidMessage, m.ID, m.DeliverAt.Sub(now).Round(time.Second), MaxDelay)
			}
			if _, ok := p.client.conn.(Scheduler); !ok {
				return nil, fmt.Errorf("%w: message %s is due at %v", ErrDelayUnsupported, m.ID, m.DeliverAt)
			}
		}
		if !copied {
			send = append([]*Message(nil), msgs...)
			copied = true
		}
		cp := *m
		cp.Headers = maps.Clone(m.Headers)
		cp.SetHeader(HeaderDeliverAt, m.DeliverAt.UTC().Format(time.RFC3339Nano))
		send[i] = &cp
	}
	return send, nil
}

// sendOrSchedule schedules the messages due later and sends the rest.
func (p *producer) sendOrSchedule(ctx context.Context, topic string, msgs []*Message) error {
	n := 0
	for _, m := range msgs {
		if !m.DeliverAt.IsZero() {
			n++
		}
	}
	if n == 0 {
		return p.client.conn.Send(ctx, topic, msgs)
	}
	now := time.Now()
	var later []*Message
	due := make([]*Message, 0, len(msgs))
	for _, m := range msgs {
		if m.DeliverAt.After(now) {
			later = append(later, m)
		} else {
			due = append(due, m)
		}
	}
	// Schedule first: a backend that refuses delays for this topic for
	// good (ErrDelayUnsupported, ErrInvalidMessage) then sends nothing.
	if len(later) > 0 {
		s, ok := p.client.conn.(Scheduler)
		if !ok {
			return ErrDelayUnsupported
		}
		if err := s.Schedule(ctx, topic, later); err != nil {
			return err
		}
	}
	if len(due) == 0 {
		return nil
	}
	return p.client.conn.Send(ctx, topic, due)
}

// TakeDeliveryHeaders turns the SDK's delivery headers of a delivered
// message (HeaderDeliverAt, HeaderAttemptsBefore, HeaderForGroup) into its
// fields (DeliverAt; Attempt, to which the attempts before are added) and
// removes them. It reports false when the message is addressed to another
// consumer group than group (a RetryLater copy of another group's): the
// caller should acknowledge it without handling it.
//
// Consumer does this for every delivery; code that reads a backend by
// other means (kafka.Transform) calls it itself, after setting Attempt.
func TakeDeliveryHeaders(m *Message, group string) bool {
	if len(m.Headers) == 0 {
		return true
	}
	if v, ok := m.Headers[HeaderDeliverAt]; ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			m.DeliverAt = t
		}
		delete(m.Headers, HeaderDeliverAt)
	}
	if v, ok := m.Headers[HeaderAttemptsBefore]; ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			m.Attempt += n
		}
		delete(m.Headers, HeaderAttemptsBefore)
	}
	if v, ok := m.Headers[HeaderForGroup]; ok {
		delete(m.Headers, HeaderForGroup)
		if v != group {
			return false
		}
	}
	if len(m.Headers) == 0 {
		m.Headers = nil
	}
	return true
}
