// Package mq gives services one Producer/Consumer contract over several
// message brokers. A service writes its messaging code once against
// [Producer], [Consumer] and [Handler], and picks the broker with a URL:
//
//	mem://                         in-process broker (package memory)
//	kafka://host1:9092,host2:9092  Apache Kafka (package kafka)
//	amqp://user:pass@host:5672/    RabbitMQ (package rabbit)
//	redis://host:6379/0            Redis Streams (package redisstream)
//
// Backends register their URL scheme from an init function, the way
// database/sql drivers do, so a program links only the brokers it imports:
//
//	import _ "github.com/mqkit/mq/memory"
//
//	c, err := mq.Open(ctx, os.Getenv("MQ_URL"))
//
// # Delivery contract
//
// Every backend keeps the same contract, checked by package mqtest:
//
//   - At-least-once. [Producer.Produce] returns nil only after the broker has
//     durably accepted every message. A handler returning nil acknowledges
//     the message; an error (or a panic) makes it come back, with
//     [Message.Attempt] one higher. Stopping a consumer mid-handler loses
//     nothing.
//   - Messages round-trip exactly: ID, Key, Headers and Body come out as they
//     went in. Produce gives every message without an ID a time-ordered one
//     (a UUIDv7), which survives redelivery.
//   - Consumers in one group share a topic's messages; each group gets every
//     message produced after it was created.
//   - Messages with the same non-empty key are handled one at a time, in the
//     order they were produced, even when a consumer runs many handlers at
//     once (see [WithConcurrency]). Messages with an empty key carry no
//     order.
//   - Cancelling the context given to [Consumer.Consume] stops fetching,
//     lets running handlers finish (bounded by [WithShutdownTimeout]),
//     acknowledges them, returns the rest to the broker, and then returns.
//
// # Failures
//
// A handler error is retried in-process: the same message is handed to the
// handler again after a backoff (see [WithNackBackoff]) while later messages
// with the same key wait, and messages with other keys go on. Wrap an error
// with [Permanent] to tell retry middleware not to retry it; package
// middleware and package dlq build retry budgets and dead-lettering on top.
package mq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"
)

// Message is the unit that producers send and handlers receive.
//
// The producer sets ID (optional), Key, Headers and Body. On delivery the
// backend also sets Topic, Timestamp and Attempt.
type Message struct {
	// ID identifies the message across redeliveries and dead-lettering.
	// Produce fills an empty ID with a new UUIDv7 and writes it back into
	// the Message, so the caller learns the ID it was given.
	ID string

	// Key orders and routes messages: messages with the same non-empty key
	// are handled in produce order. Kafka also uses it to pick the
	// partition. Any bytes are allowed.
	Key string

	// Headers are string pairs carried with the message. Names and values
	// may hold any bytes. Header names starting with "mq-" are reserved for
	// the SDK and its middleware.
	Headers map[string]string

	// Body is the payload. It may be empty or nil (both arrive as empty) and
	// may hold any bytes. A handler must not keep or modify Body after it
	// returns: some backends reuse it.
	Body []byte

	// Topic is the topic the message was delivered from. Set on delivery.
	Topic string

	// Timestamp is when the broker accepted the message (or, where the
	// broker keeps none, when it was delivered). Set on delivery.
	Timestamp time.Time

	// Attempt counts deliveries of this message to this consumer group,
	// starting at 1. Set on delivery.
	Attempt int

	// DeliverAt, set by the producer, delays the message: it waits in the
	// broker and is delivered not before this time (see DeliverAfter and
	// Scheduler). Zero, or a time already past, sends it now. On
	// delivery it is the time the message was due, zero for a message
	// that was not delayed.
	DeliverAt time.Time
}

// HeaderIDNotUnique is the header a backend sets, to "true", on a
// delivered message whose ID it had to derive because the producer (a
// client other than mqkit) gave the message none and the broker keeps
// nothing that tells two such messages apart: distinct messages may then
// share the ID. Deduplication by ID must not trust it: package idempotency
// runs such messages unguarded, as at-least-once delivery, rather than
// skip one as a duplicate of another. Producers that want dedup set a
// message ID (the AMQP message_id property, say).
const HeaderIDNotUnique = "mq-id-not-unique"

// Clone returns a copy of m with its own Headers map and Body slice, safe to
// keep and modify after the handler returns.
func (m *Message) Clone() *Message {
	c := *m
	c.Headers = maps.Clone(m.Headers)
	if m.Body != nil {
		c.Body = append([]byte{}, m.Body...)
	}
	return &c
}

// Header returns the value of the header name, or "" when it is absent.
// It is safe to call on a message with nil Headers.
func (m *Message) Header(name string) string { return m.Headers[name] }

// SetHeader sets a header, allocating the Headers map if needed.
func (m *Message) SetHeader(name, value string) {
	if m.Headers == nil {
		m.Headers = make(map[string]string, 4)
	}
	m.Headers[name] = value
}

// String describes the message without its body or headers, for logs.
func (m *Message) String() string {
	return fmt.Sprintf("message %s (topic %q, key %q, attempt %d, %d bytes)", m.ID, m.Topic, m.Key, m.Attempt, len(m.Body))
}

// Producer sends messages to topics.
//
// Implementations are safe for concurrent use by many goroutines.
type Producer interface {
	// Produce sends msgs to topic and returns nil only after the broker has
	// durably accepted all of them (Kafka acks=all, RabbitMQ publisher
	// confirms, the Redis XADD reply). Messages without an ID get one, set
	// in place. Many messages in one call are pipelined, not sent one round
	// trip at a time.
	//
	// On error some of the messages may have been accepted: producing the
	// same messages again (with the IDs Produce assigned) is safe for
	// consumers that deduplicate by ID. Errors wrap ErrClosed,
	// ErrMessageTooLarge, ErrInvalidMessage or a backend error.
	Produce(ctx context.Context, topic string, msgs ...*Message) error

	// Close releases the producer. Produce after Close returns ErrClosed.
	// Close is idempotent and safe to call concurrently.
	Close() error
}

// Consumer receives the messages of one topic as a member of one group.
type Consumer interface {
	// Consume calls h for each message until ctx is cancelled, Close is
	// called, or a permanent error happens. It blocks until the consumer
	// has shut down gracefully: handlers that were running have finished
	// (or were cancelled after the shutdown timeout) and been acknowledged,
	// and messages fetched but not handled have been returned to the broker.
	//
	// It returns nil after ctx was cancelled or Close was called, and an
	// error otherwise. Consume may be called again after it returns, but
	// not concurrently with itself. Between calls the consumer stays a
	// member of its group, and on some brokers (Kafka) the share of the
	// topic assigned to it waits for it: Close a consumer that will not
	// consume again.
	Consume(ctx context.Context, h Handler) error

	// Close stops a running Consume (as cancelling its context does), waits
	// for it to return, and leaves the group. Close is idempotent and safe
	// to call concurrently, but not from a Handler of this consumer: it
	// would wait for that handler to return. To stop from a handler, cancel
	// the context given to Consume.
	Close() error
}

// Handler processes one message. Returning nil acknowledges it; returning an
// error makes it come back with Attempt one higher.
//
// ctx is cancelled when the consumer shuts down and the shutdown timeout
// has passed; a handler doing slow work should honour it.
type Handler interface {
	Handle(ctx context.Context, m *Message) error
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// Handle calls f(ctx, m).
func (f HandlerFunc) Handle(ctx context.Context, m *Message) error { return f(ctx, m) }

// Middleware wraps a Handler with behaviour, the way net/http middleware
// wraps an http.Handler.
type Middleware func(Handler) Handler

// Chain wraps h in mws. The first middleware is the outermost: it sees a
// message first and the handler's result last. Chain(h, a, b) is a(b(h)).
// Nil middlewares are skipped.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		if mws[i] != nil {
			h = mws[i](h)
		}
	}
	return h
}

// Errors returned by the SDK, checkable with errors.Is.
var (
	// ErrClosed is returned by operations on a closed Client, Producer or
	// Consumer.
	ErrClosed = errors.New("mq: closed")

	// ErrUnknownScheme is returned by Open for a URL scheme that no
	// imported backend registered.
	ErrUnknownScheme = errors.New("mq: unknown URL scheme")

	// ErrInvalidURL is returned by Open for a malformed URL or an unknown
	// or malformed query parameter.
	ErrInvalidURL = errors.New("mq: invalid URL")

	// ErrMessageTooLarge is returned by Produce, before anything is sent,
	// for a message larger than the backend or configuration allows.
	ErrMessageTooLarge = errors.New("mq: message too large")

	// ErrInvalidMessage is returned by Produce for a nil message, an empty
	// topic name, or a message the backend cannot represent.
	ErrInvalidMessage = errors.New("mq: invalid message")

	// ErrBufferFull is returned by Produce when a bounded buffer is full and
	// the backend is configured to fail rather than wait.
	ErrBufferFull = errors.New("mq: buffer full")

	// ErrNoGroup is returned when a consumer is created without a group.
	ErrNoGroup = errors.New("mq: consumer needs a group")

	// ErrUnknownGroup is wrapped by the error a backend's lag or group
	// operation returns for a consumer group the broker does not know:
	// one that never consumed, or was deleted. It is never reported as a
	// group that is behind by everything.
	ErrUnknownGroup = errors.New("mq: unknown consumer group")

	// ErrGroupActive is wrapped by the error of Client.DeleteGroup for a
	// group whose consumers are still running.
	ErrGroupActive = errors.New("mq: consumer group has live members")

	// ErrInProgress is returned (wrapped) by a handler or middleware when
	// another consumer is handling the same message right now, as dedup
	// middleware reports a claim held elsewhere. The message should come
	// back later: retry middleware waits on it without using up attempts,
	// and dead-letter middleware never dead-letters it.
	ErrInProgress = errors.New("mq: message is being handled elsewhere")

	// ErrUnavailable is wrapped by every error that a broker, or a store
	// the SDK's middleware uses (a dedup or attempt store), returns while
	// it cannot be reached or is not serving: a refused or dropped
	// connection, a timeout talking to it, a cluster with no leader or
	// primary for the data. Such a failure is transient: retrying the same
	// call later may succeed, so Produce may be called again with the same
	// messages (their IDs make it safe for consumers that deduplicate).
	//
	// Returned by (or wrapped in) a handler's error, it means the message
	// could not be handled for want of infrastructure, not that it is bad:
	// the consumer and middleware.Retry retry it without using up an
	// attempt (Attempt stays as it was), and dead-letter middleware never
	// dead-letters it.
	ErrUnavailable = errors.New("mq: broker or store unavailable")
)

// NotAnAttempt reports whether err wraps ErrInProgress or ErrUnavailable:
// the handler did not fail at the message itself (another consumer is
// handling it, or a broker or store it needs is down). Retry and
// dead-letter middleware and the consumer's own redelivery use it so that
// such a failure never counts as one of the message's attempts and never
// sends it to a dead-letter topic.
func NotAnAttempt(err error) bool {
	return errors.Is(err, ErrInProgress) || errors.Is(err, ErrUnavailable)
}

// permanentError marks an error that retrying will not fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: retry middleware gives up at
// once and dead-letter middleware routes the message straight to its dead
// letter topic. Permanent(nil) is nil. The result unwraps to err.
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
