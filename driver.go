package mq

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"time"
)

// This file holds what a backend implements. Services do not use these
// types directly: they use Open, Client, Producer and Consumer, and the
// portable layer adds ID generation, validation, key-ordered concurrency,
// in-process redelivery and graceful shutdown on top of every backend.

// Driver opens connections for one URL scheme. A backend registers its
// Driver with Register from an init function.
type Driver interface {
	// Open connects to the broker that u names. The portable query
	// parameters (see Open) have been removed from u; the driver must
	// reject any parameter it does not know with an error wrapping
	// ErrInvalidURL. Errors must not contain the URL's password. ctx
	// carries the client's logger (LoggerFrom), which the connection
	// logs through.
	Open(ctx context.Context, u *url.URL) (Conn, error)
}

type loggerKey struct{}

// LoggerFrom returns the logger that the context given to Driver.Open, or
// to a handler, carries: the one set with WithLogger, else slog.Default().
// Backends and handler wrappers (Batch) log through it, so every line of
// the SDK goes to the service's logger.
func LoggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok && l != nil {
		return l
	}
	return slog.Default()
}

// Conn is an open connection to a broker. Its methods may be called
// concurrently.
type Conn interface {
	// Send durably writes msgs to topic and returns after the broker has
	// accepted all of them. Every message has a non-empty ID and passed the
	// portable checks. Send must not keep msgs or their Body after it
	// returns. A message over the backend's size limit fails with an error
	// wrapping ErrMessageTooLarge before anything is sent.
	Send(ctx context.Context, topic string, msgs []*Message) error

	// Subscribe joins group on topic and returns a subscription. When
	// Subscribe returns, the group exists on the broker: messages produced
	// from then on are kept for it even before Receive is first called.
	Subscribe(ctx context.Context, topic, group string, opts SubscribeOptions) (Subscription, error)

	// Close releases the connection. Subscriptions and sends in progress
	// fail with ErrClosed. Close is idempotent.
	Close() error
}

// SubscribeOptions tells a driver how the portable consumer will use a
// subscription, so it can size its buffers.
type SubscribeOptions struct {
	// MaxInFlight is the most deliveries the consumer holds unacknowledged
	// at once (fetched, running, or waiting for an in-process retry).
	MaxInFlight int
	// Concurrency is how many handlers run at once.
	Concurrency int
}

// Subscription is one consumer's membership of a group. Receive is called
// from one goroutine; Ack and Nack of its deliveries from many.
type Subscription interface {
	// Receive blocks until at least one delivery is available, ctx is done
	// or the subscription is closed, and returns at most max deliveries.
	// Deliveries of one key must come in produce order. A transient broker
	// failure should be retried inside Receive (reconnecting as needed); an
	// error returned by Receive is logged and Receive called again after a
	// backoff, unless it wraps ErrClosed or is Permanent, which end Consume.
	Receive(ctx context.Context, max int) ([]Delivery, error)

	// Close leaves the group. Deliveries not yet acknowledged go back to
	// the broker (or, for Kafka, their offsets stay uncommitted). Close is
	// idempotent.
	Close() error
}

// Delivery is one message delivered to a subscription, with the means to
// settle it. Each delivery is settled once, by Ack or Nack.
type Delivery interface {
	// Message returns the delivered message, with Topic, Timestamp and
	// Attempt set. The portable layer may modify it (Attempt grows with
	// in-process retries).
	Message() *Message
	// Ack tells the broker the message was handled.
	Ack(ctx context.Context) error
	// Nack returns the message to the broker for redelivery, to this or
	// another member of the group. The portable layer calls it for messages
	// it fetched but did not finish (at shutdown), and for every delivery
	// whose Lost channel closed (see Lost); handler errors are retried
	// in-process instead, which keeps key order.
	Nack(ctx context.Context) error
	// Lost returns a channel that the driver closes when the subscription
	// loses the right to settle the delivery: its Kafka partition was
	// revoked, its AMQP channel closed, its Redis shard lease or pending
	// entry passed to another consumer (or may have: a driver fences by its
	// own clock, with a margin, rather than wait to learn it). Deliveries
	// that share one right (one partition claim, one channel, one lease)
	// return the same channel. Nil means the delivery is never lost while
	// the subscription is open.
	//
	// Once Lost is closed the portable layer cancels the context of a
	// handler still running the delivery, drops it and every delivery of
	// the same channel still queued or waiting for a retry, and settles
	// each of them with Nack exactly once (when the handler returns, for a
	// running one): a delivery whose channel closed before its handler
	// started or returned is never handed to the handler again nor
	// acknowledged. An Ack already under way can still race with the
	// close: a driver for which a late Ack would do harm checks ownership
	// in Ack itself. A driver's Nack of a lost delivery only gives it up:
	// the message's new owner delivers it again.
	//
	// A delivery returns the same channel every time. Each distinct
	// channel costs the portable layer a goroutine and a context until it
	// closes or Consume returns, so a driver shares one channel between
	// all the deliveries of one right, and closes it when that right ends.
	Lost() <-chan struct{}
}

// Sizer is implemented by a Conn that knows the largest message its broker
// accepts. Produce checks it, before anything is sent, when the message is
// larger than a limit set with WithMaxMessageBytes would allow anyway.
type Sizer interface {
	// MaxMessageBytes returns the largest encoded message (body, key,
	// headers and ID) the broker accepts.
	MaxMessageBytes() int
}

// GroupDeleter is implemented by a Conn that can delete a consumer group
// of a topic with everything the broker keeps for it (committed offsets,
// its queues, its pending entries). Client.DeleteGroup calls it.
type GroupDeleter interface {
	// DeleteGroup deletes group on topic. Messages kept only for the group
	// are gone; other groups are untouched. Deleting a group that does
	// not exist returns nil.
	DeleteGroup(ctx context.Context, topic, group string) error
}

// Pinger is implemented by a Conn that can check the broker is reachable
// and serving. Client.Ping calls it.
type Pinger interface {
	// Ping does one cheap round trip to the broker (or checks the
	// connection the Conn keeps is up) and returns an error wrapping
	// ErrUnavailable when the broker cannot be reached, bounded by ctx.
	Ping(ctx context.Context) error
}

// Lagger is implemented by a Conn that can tell how far a consumer group
// is behind. Client.Lag calls it.
type Lagger interface {
	// PartitionLag returns one entry per partition, shard or queue of
	// topic that group reads, sorted by Partition. A group the broker
	// does not know gives an error wrapping ErrUnknownGroup.
	PartitionLag(ctx context.Context, topic, group string) ([]PartitionLag, error)
}

// PartitionLag is how far a consumer group is behind on one partition
// (Kafka), shard stream (Redis) or queue (RabbitMQ) of a topic. Counts a
// broker cannot tell are -1.
type PartitionLag struct {
	// Partition names it: the partition number on Kafka, the stream key
	// on Redis, the queue name on RabbitMQ; empty on mem://.
	Partition string
	// Backlog counts the messages the group has not received yet.
	Backlog int64
	// Unacked counts the messages delivered to the group's consumers and
	// not yet acknowledged. On Kafka, where only committed offsets are
	// known, it is -1 and those messages count in Backlog.
	Unacked int64
	// OldestAge is how long the oldest message not yet acknowledged has
	// waited since it was produced: 0 when there is none, -1 when the
	// broker cannot tell.
	OldestAge time.Duration
}

var drivers struct {
	mu sync.RWMutex
	m  map[string]Driver
}

// Register makes a driver available under a URL scheme. It panics if d is
// nil or the scheme is already registered, as database/sql.Register does.
// Backends call it from init; services do not need to.
func Register(scheme string, d Driver) {
	if d == nil {
		panic("mq: Register driver is nil")
	}
	drivers.mu.Lock()
	defer drivers.mu.Unlock()
	if _, dup := drivers.m[scheme]; dup {
		panic("mq: Register called twice for scheme " + scheme)
	}
	if drivers.m == nil {
		drivers.m = make(map[string]Driver)
	}
	drivers.m[scheme] = d
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	drivers.mu.RLock()
	defer drivers.mu.RUnlock()
	s := make([]string, 0, len(drivers.m))
	for k := range drivers.m {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

func lookupDriver(scheme string) (Driver, error) {
	drivers.mu.RLock()
	d := drivers.m[scheme]
	drivers.mu.RUnlock()
	if d == nil {
		return nil, fmt.Errorf("%w %q (registered: %v; is the backend package imported?)", ErrUnknownScheme, scheme, Schemes())
	}
	return d, nil
}
