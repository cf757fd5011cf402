// Package mqotel traces and measures mqkit producers and consumers with
// OpenTelemetry, following the messaging semantic conventions (v1.43.0).
// It uses the OpenTelemetry API only: the service chooses the SDK and the
// exporters (package mqotel/mqprom wires a Prometheus endpoint).
//
// [New] returns an [Instrumentation]; its [Instrumentation.Options] go to
// mq.Open (or to one Producer or Consumer) and install produce and consume
// middleware (mq.WithProduceMiddleware, mq.WithConsumeMiddleware):
//
//	inst := mqotel.New(mqotel.WithSystem("kafka"))
//	c, err := mq.Open(ctx, url, inst.Options()...)
//
// # Traces
//
// Every Produce call is one span, "send {topic}", of kind PRODUCER. Its
// context is the creation context of the messages: it is written into
// their headers with the propagator (W3C traceparent and tracestate by
// default), so consumers, mqkit's or another client's, can continue the
// trace. A Produce of several messages is still one span, with
// messaging.batch.message_count, whose context all of them carry: the
// conventions' "batch publishing without Create spans". No "create" span
// is made per message; a consumer tells the messages of a batch apart by
// messaging.message.id.
//
// Which context a message carries:
//
//   - Produce called with a context that holds a valid span: the send span
//     is its child and its context replaces any trace context the message
//     carried (the dead letter that package dlq publishes from inside a
//     handler thus carries the handler's process span). The send span
//     links to the replaced context, so the correlation is kept.
//   - Produce called with a context without a span (a redrive tool, a
//     batch job) for a message that already carries a trace context: the
//     message keeps it, unchanged, and the send span links to it, and is
//     its child when every message of the call carries the same one (one
//     message always does). dlq.Redrive thus continues the trace of the
//     original failure.
//   - Otherwise the send span is a root and its context is written.
//
// Every handler call of a consumer is one span, "process {topic}", of
// kind CONSUMER: each delivery, and each in-process redelivery by the
// consumer after the handler returned an error. Retries made inside the
// handler by middleware.Retry are in the same span; pass
// [Instrumentation.OnRetry] as middleware.RetryConfig.OnRetry to record
// each as a "retry" event. The process span links to the message's
// creation context, from its headers, whoever wrote them. By default its
// parent is the consumer's own context (normally none: a new trace per
// delivery, linked to the producer's), as the conventions recommend; with
// [WithMessageParent] it is a child of the creation context instead, so
// producer and consumer share one trace, and it also links to the
// ambient span, if any. Baggage in the headers reaches the handler's
// context either way.
//
// Span attributes: messaging.system (kafka, rabbitmq, redis, inmemory,
// from the client's URL scheme, or [WithSystem] for sends),
// messaging.operation.name and messaging.operation.type (send or
// process), messaging.destination.name (the topic),
// messaging.consumer.group.name, messaging.message.id and
// messaging.message.body.size (for one message),
// messaging.batch.message_count (for several),
// messaging.destination.partition.id and messaging.kafka.offset (Kafka)
// or mqkit.offset (the position text of other backends) where the backend
// tells the delivery's position, and two of mqkit's own:
//
//	mqkit.attempt   int     the message's Attempt when the handler call began
//	mqkit.outcome   string  what became of the delivery (see below)
//
// A failed send or handler call sets the span status to Error, records the
// error as an event, and sets error.type (see [WithErrorType]).
//
// # Outcomes
//
// mqkit.outcome says what the handler call did to the message:
//
//	ack            handled; the consumer acknowledges it
//	dead_lettered  sent to its dead-letter topic and acknowledged (package dlq)
//	duplicate      handled before, skipped and acknowledged (package idempotency)
//	retry          the handler failed; the message comes back
//	in_progress    another consumer is handling it (mq.ErrInProgress); it comes back
//	unavailable    a broker or store was down (mq.ErrUnavailable); it comes back
//
// # Metrics
//
// The instruments, with their Prometheus names as package mqprom exports
// them:
//
//	messaging.client.sent.messages      counter    messaging_client_sent_messages_total
//	messaging.client.operation.duration histogram  messaging_client_operation_duration_seconds   (send)
//	messaging.client.consumed.messages  counter    messaging_client_consumed_messages_total
//	messaging.process.duration          histogram  messaging_process_duration_seconds
//	mqkit.process.active                gauge      mqkit_process_active                          (handlers running)
//	mqkit.consumer.lag                  gauge      mqkit_consumer_lag                            (see ObserveLag)
//	mqkit.consumer.unacked              gauge      mqkit_consumer_unacked
//	mqkit.consumer.oldest_age           gauge      mqkit_consumer_oldest_age_seconds
//
// All carry messaging.system and messaging.destination.name; consumer
// instruments carry messaging.consumer.group.name; the per-delivery ones
// carry mqkit.outcome, and error.type when the call failed. The lag
// gauges carry messaging.destination.partition.id. The histograms use the
// conventions' recommended buckets (5 ms to 10 s).
//
// Cost: attribute sets are built once per topic, group and outcome and
// reused. The two counters and the in-flight gauge are asynchronous
// instruments fed by atomic counters and read at collection, so a
// delivery makes one SDK measurement (the process duration) and a
// Produce call one (the send duration); they are exported exactly like
// synchronous counters (monotonic cumulative sums). BENCHMARKS.md has the
// measured overhead.
package mqotel
