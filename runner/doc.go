// Package runner runs the handlers of a service built on mqkit, and lets
// handlers publish messages as part of handling one.
//
// # Running handlers
//
// A [Runner] holds the service's routes: each is a topic, a consumer
// group, a handler, its middleware and consumer options, under a name.
// [Runner.Run] joins every route's group, consumes all of them at once,
// and stops them all when its context is cancelled or one of them fails
// for good, returning the first such failure as a [*RouteError] that names
// the route:
//
//	ctx, stop := runner.SignalContext(context.Background()) // cancelled on SIGINT or SIGTERM
//	defer stop()
//	r := runner.New(client)
//	r.Handle(runner.Route{Name: "billing", Topic: "orders", Group: "billing", Handler: h, Middleware: []mq.Middleware{stack}})
//	err := r.Run(ctx)
//
// Stopping is the consumers' graceful shutdown, for all routes at once:
// fetching stops, running handlers finish within their consumer's
// shutdown timeout (mq.WithShutdownTimeout, in the client's URL or the
// route's Options), are acknowledged, and what was not handled goes back
// to the broker. Run returns once every consumer has finished, so the
// whole shutdown is bounded by the longest shutdown timeout, not their
// sum.
//
// A Runner has no global state and installs no signal handler: several
// runners may live in one process, each stopped by its own context.
// [SignalContext] makes a context that SIGINT and SIGTERM cancel, the way
// signal.NotifyContext does. [Runner.Running] is closed once every group
// is joined, and [Runner.Ready] (or [Runner.HealthCheck], for package
// health) tells readiness probes whether the runner is consuming.
//
// # Handlers that publish
//
// [Publishing] turns a [PublishFunc], a handler that may emit messages to
// other topics while it handles one, into an mq.Handler. The handler adds
// them to its [Outputs]; they are sent through a [Publisher] (an
// mq.Producer, or an outbox) after the handler returned nil and before the
// input is acknowledged. So:
//
//   - a crash or a failed publish brings the input back and the handler
//     runs again: an output is never dropped;
//   - a handler that fails publishes nothing;
//   - an output can be published twice: once by a run whose input was not
//     acknowledged (the process died, the ack was lost), once by the run
//     that handles the input again.
//
// That is at-least-once delivery of the outputs, and deduplication
// downstream absorbs it. Every output without an ID gets one derived from
// the input's ID, "<input ID>/<n>" for the n-th output (from 0), or
// "<input ID>/<name>" with [Outputs.ID]: running the handler again for the
// same input makes the same IDs, and a consumer with dedup middleware
// (package idempotency, keyed by message ID) skips the second copy. For
// this to hold, the handler must emit the same outputs in the same order
// for the same input, or name them.
//
// Every output carries the input's ID as its causation ID
// ([HeaderCausationID]) and the input's correlation ID, or the input's ID
// when it has none, as its correlation ID ([HeaderCorrelationID]), so the
// messages caused by one order share its ID however many hops they go.
// The outputs are produced with the handler's context, so produce
// middleware that propagates traces (package mqotel) puts the handler's
// span context into them.
//
// Use the publishing handler as the handler the middleware stack wraps,
// not as middleware outside it: dedup (middleware.StackConfig.Dedup) must
// record a message done only once its outputs were published, or a failed
// publish followed by a redelivery would skip the handler and lose them.
package runner
