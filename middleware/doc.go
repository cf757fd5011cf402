// Package middleware holds the handler middleware of mq: Retry, Timeout,
// Recover, Throttle and Log, and Stack, which composes them with deduplication
// (package idempotency) and dead-lettering (package dlq) in one order that
// does the right thing.
//
// Each middleware is an mq.Middleware, a func(mq.Handler) mq.Handler, and
// composes with mq.Chain, whose first argument is the outermost layer.
//
// # Composition order
//
// Stack builds this order, outermost first. Each row says why the layer
// sits where it does; the cases users most often get wrong are the ones
// the order settles.
//
//	| layer      | sees                      | why here                                                        |
//	|------------|---------------------------|-----------------------------------------------------------------|
//	| Throttle   | each delivery once        | outermost: caps deliveries handled per second, retries aside;   |
//	|            |                           | a wait ends at shutdown and the message goes back unhandled     |
//	| DeadLetter | the final outcome         | outside Retry, so only a failure that survived every retry (or  |
//	|            |                           | a Permanent error, or a panic) is dead-lettered, exactly once,  |
//	|            |                           | with the Attempt count and first-failure time Retry recorded;   |
//	|            |                           | counts deliveries (MaxAttempts, AttemptCounter) once each;      |
//	|            |                           | never dead-letters an mq.NotAnAttempt error                     |
//	| Retry      | every attempt's error     | retries in-process with backoff; sets mq-first-failure and      |
//	|            |                           | counts attempts in m.Attempt; waits on mq.NotAnAttempt errors   |
//	|            |                           | (a claim busy elsewhere, a store down) without counting them    |
//	| Timeout    | one attempt               | inside Retry, so every attempt gets the full deadline rather    |
//	|            |                           | than all attempts sharing one                                   |
//	| Dedup      | one attempt               | inside Retry, so each attempt claims and a failed attempt       |
//	|            |                           | releases the claim for the next one; an attempt after the work  |
//	|            |                           | completed (or a duplicate delivery) is skipped and acked; the   |
//	|            |                           | claim is extended while the handler runs; a store outage is     |
//	|            |                           | mq.ErrUnavailable, so it waits instead of failing               |
//	| Recover    | the handler's panic       | innermost: the layers above see a panic as an ordinary error:   |
//	|            |                           | Dedup releases the claim, Retry retries it, DeadLetter routes   |
//	|            |                           | it with the *mq.PanicError's stack                              |
//
// # Errors that are not attempts
//
// mq.NotAnAttempt(err) holds for errors wrapping mq.ErrInProgress (the
// dedup claim is held by another instance: idempotency.ErrBusy) or
// mq.ErrUnavailable (the dedup store, or another broker or store the
// handler needs, cannot be reached). Every layer treats them alike: Retry
// waits and calls again without incrementing Attempt, and returns the
// error itself, never a *RetryError, when MaxElapsedTime runs out; the
// consumer redelivers without incrementing Attempt; DeadLetter returns
// the error so the message comes back, and takes the delivery back off
// its AttemptCounter. A message is never dead-lettered because a store
// was down or a duplicate was running.
//
// Log writes one structured line per call (never the body). Put tracing
// and logging outside the whole stack (mq.Chain(h, logging,
// Stack(cfg))) to see one span per delivery, or around the handler inside
// it (Stack(cfg)(mq.Chain(h, logging))) to see each attempt.
//
// # Retries in three places
//
// A failing message can be retried by Retry (in-process, seconds: holds
// the consumer's handler slot and the message's key), by the consumer
// itself (a returned error makes the message come back with Attempt one
// higher after mq.WithNackBackoff), and by redriving it from a dead-letter
// topic (package dlq; hours later, by hand). Retry counts with the
// message's Attempt, so a message the consumer redelivers after Retry gave
// up gets one more call each time, not a fresh budget: with a DeadLetter
// layer it is dead-lettered instead of coming back.
//
// # Contexts and shutdown
//
// Every layer honours the handler's context: Throttle and Retry stop
// waiting when it is done and return the last error, so the message goes
// back to the broker. Note that the consumer cancels the handler context
// only after its shutdown timeout (mq.WithShutdownTimeout): until then a
// stopping consumer lets running handlers, and their retries, go on.
package middleware
