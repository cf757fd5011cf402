package mq

import (
	"context"
	"fmt"
	"time"
)

// This file holds the hooks that observability packages (tracing,
// metrics, logging) plug into: middleware around every Produce of a
// client's producers and around every handler call of its consumers, and
// what a handler's context tells about the delivery it is running.

// ProduceFunc sends msgs to topic: a Producer's Produce after the portable
// checks passed and every message has its ID.
type ProduceFunc func(ctx context.Context, topic string, msgs []*Message) error

// ProduceMiddleware wraps the sending of every Produce call of a client's
// producers, the way Middleware wraps a Handler: to start a span and put
// its trace context into the messages' headers, to count and time sends.
// It runs after the IDs were assigned, on copies of the caller's messages
// with their own Headers maps, so it may add headers (a trace context)
// without touching the caller's maps; the size limit is checked after it.
// It must not keep the messages after it returns.
type ProduceMiddleware func(next ProduceFunc) ProduceFunc

// WithProduceMiddleware adds middleware around the sends of the producers
// made from the client (given to Open or NewClient) or of one producer
// (given to Client.Producer). The first is the outermost.
func WithProduceMiddleware(mws ...ProduceMiddleware) Option {
	return func(o *options) { o.produceMW = append(o.produceMW[:len(o.produceMW):len(o.produceMW)], mws...) }
}

// WithConsumeMiddleware adds middleware around every handler call of the
// consumers made from the client (given to Open or NewClient) or of one
// consumer (given to Client.Consumer), outside the handler given to
// Consume and whatever middleware it was built with: it sees every call,
// an in-process redelivery included, with the handler's final result. The
// first is the outermost. Inside it, DeliveryFrom tells the delivery's
// topic, group and position.
func WithConsumeMiddleware(mws ...Middleware) Option {
	return func(o *options) { o.consumeMW = append(o.consumeMW[:len(o.consumeMW):len(o.consumeMW)], mws...) }
}

// chainProduce wraps send in mws, the first outermost.
func chainProduce(send ProduceFunc, mws []ProduceMiddleware) ProduceFunc {
	for i := len(mws) - 1; i >= 0; i-- {
		if mws[i] != nil {
			send = mws[i](send)
		}
	}
	return send
}

// Positioner is implemented by a Delivery that knows where its message
// sits in the broker, for traces and logs.
type Positioner interface {
	// Position returns the partition (Kafka partition number, Redis
	// stream key, RabbitMQ queue) and the offset within it (Kafka
	// offset, Redis entry ID, AMQP delivery tag) as text.
	Position() (partition, offset string)
}

// DeliveryInfo describes the delivery a handler is running, for
// middleware installed with WithConsumeMiddleware.
type DeliveryInfo struct {
	// Scheme is the URL scheme of the client's backend ("kafka", "amqp",
	// "redis", "mem", ...); empty for a client made with NewClient.
	Scheme string
	// Topic and Group are the consumer's.
	Topic, Group string
	// Partition and Offset are the delivery's position, where the
	// backend tells it (see Positioner); empty otherwise.
	Partition, Offset string
	// Received is when the consumer received the delivery from the
	// backend, once per delivery: for an in-process retry it is still
	// the first receipt, so the time since includes earlier attempts and
	// their backoff.
	Received time.Time

	outcome Outcome
}

// Outcome is what became of a handled message, as a middleware that
// decided it reports with SetOutcome, for metrics and logs. The empty
// Outcome means the handler's result tells: nil is to be acknowledged, an
// error retried. The consumer may still give the message back instead:
// when its ownership was lost meanwhile (the handler's context is then
// cancelled with its Lost channel) or it is shutting down.
type Outcome string

// Outcomes reported by the SDK's middleware.
const (
	// OutcomeDeadLettered: the message went to its dead-letter topic and
	// was acknowledged (package dlq).
	OutcomeDeadLettered Outcome = "dead_lettered"
	// OutcomeDuplicate: the message was handled before and skipped
	// (package idempotency).
	OutcomeDuplicate Outcome = "duplicate"
)

type deliveryKey struct{}

// consumerKey is the key of the consumer's own DeliveryInfo (scheme,
// topic and group only) in every handler context: a value set once per
// Consume, read only by DeliveryFrom.
type consumerKey struct{}

// infoCtx is the context of one handler call with its DeliveryInfo, both
// in one allocation (a context.WithValue would be a second one). A
// handler may keep it, or the info, like any context: neither is reused.
type infoCtx struct {
	context.Context
	info DeliveryInfo
}

func (c *infoCtx) Value(key any) any {
	if key == (deliveryKey{}) {
		return &c.info
	}
	return c.Context.Value(key)
}

func (c *infoCtx) String() string { return fmt.Sprintf("%v.WithDeliveryInfo", c.Context) }

// DeliveryFrom returns the delivery info of a handler's context. With
// consume middleware (WithConsumeMiddleware) it is complete; without it,
// the consumer records no per-delivery info, so a consumer without it
// pays nothing, and DeliveryFrom returns a copy of the consumer's own
// part: Scheme, Topic and Group, nothing else.
func DeliveryFrom(ctx context.Context) (*DeliveryInfo, bool) {
	if c, ok := ctx.(*infoCtx); ok { // the outermost middleware's: no lookup
		return &c.info, true
	}
	if d, ok := ctx.Value(deliveryKey{}).(*DeliveryInfo); ok {
		return d, true
	}
	if c, ok := ctx.Value(consumerKey{}).(*DeliveryInfo); ok {
		cp := *c // the caller may write it (SetOutcome): its own copy
		return &cp, true
	}
	return nil, false
}

// SetOutcome records, for the consume middleware of the delivery ctx
// belongs to, what became of it (see Outcome). It does nothing for a
// context without delivery info.
func SetOutcome(ctx context.Context, o Outcome) {
	if d, ok := DeliveryFrom(ctx); ok {
		d.outcome = o
	}
}

// Outcome returns what a middleware reported with SetOutcome, or "".
func (d *DeliveryInfo) Outcome() Outcome { return d.outcome }
