package bench

import (
	"fmt"
	"net/url"
	"sync"

	"github.com/mqkit/mq"
)

// Bare returns the System that runs the workload through the bare driver
// of rawURL's broker, written as an expert would with the durability the
// SDK gives:
//
//   - kafka://: sarama AsyncProducer (acks=all, idempotent, one shared by
//     all producers, every message's success awaited) and a
//     ConsumerGroup that marks each offset once it and every earlier
//     one were handled;
//   - amqp://, amqps://: amqp091-go with publisher confirms (deferred,
//     up to the confirm window in flight per channel, mandatory,
//     persistent) and a manual-ack consumer with prefetch;
//   - redis://, rediss://: go-redis pipelined XADD, and XREADGROUP with
//     XACK after handling (acks batched).
//
// Consumers hand messages to Concurrency workers by key hash, so a key's
// messages are handled in order, with at most BareInFlight messages
// fetched and not yet handled (or Concurrency, when that is more): the
// window an expert gives a consumer, chosen on its own and not tied to
// the SDK's default. There is no bare driver for mem://.
func Bare(rawURL string) (System, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w %s", mq.ErrInvalidURL, mq.RedactURL(rawURL))
	}
	stripPortable(u)
	switch u.Scheme {
	case "kafka":
		return newBareKafka(u)
	case "amqp", "amqps":
		return newBareRabbit(u)
	case "redis", "rediss":
		return newBareRedis(u)
	}
	return nil, fmt.Errorf("bench: no bare driver for %s:// (bare runs exist for kafka, amqp and redis)", u.Scheme)
}

// stripPortable removes mq.Open's parameters (and the benchmark's
// create_topics) from u: the SDK handles them, the bare drivers do not.
func stripPortable(u *url.URL) {
	q := u.Query()
	for _, p := range []string{"group", "concurrency", "max_in_flight", "shutdown_timeout", "nack_backoff", "max_nack_backoff", "max_message_bytes", "create_topics"} {
		q.Del(p)
	}
	u.RawQuery = q.Encode()
}

// BareInFlight is the in-flight window of the bare consumers: how many
// messages each holds fetched and not yet handled (the Redis XREADGROUP
// COUNT budget, the RabbitMQ prefetch, the slots of each Kafka claim).
// 256 is what an expert keeps in flight with these drivers (128-256),
// chosen for the bare clients on its own: it does not follow the SDK's
// default (mq.DefaultMinInFlight, 4×concurrency), so a change there
// cannot move the baseline.
const BareInFlight = 256

// bareWindow is the bare consumers' in-flight window at concurrency:
// BareInFlight, or concurrency when that is more, so that every worker can
// hold a message.
func bareWindow(concurrency int) int { return max(BareInFlight, concurrency) }

// workers runs handlers on n goroutines, each with its own queue, picking
// the queue by key hash so that a key's messages run in order. Messages
// without a key go round-robin.
type workers[T any] struct {
	queues []chan T
	rr     int
	wg     sync.WaitGroup
}

func startWorkers[T any](n, depth int, run func(T)) *workers[T] {
	w := &workers[T]{queues: make([]chan T, n)}
	for i := range w.queues {
		q := make(chan T, depth)
		w.queues[i] = q
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for t := range q {
				run(t)
			}
		}()
	}
	return w
}

// submit queues t on the worker of key. It is called from one goroutine.
func submit[T any, K ~string | ~[]byte](w *workers[T], key K, t T) {
	var i int
	if len(key) == 0 {
		w.rr++
		i = w.rr % len(w.queues)
	} else {
		h := uint32(2166136261) // FNV-1a
		for j := 0; j < len(key); j++ {
			h ^= uint32(key[j])
			h *= 16777619
		}
		i = int(h % uint32(len(w.queues)))
	}
	w.queues[i] <- t
}

// stop lets the workers finish what they hold and waits for them.
func (w *workers[T]) stop() {
	for _, q := range w.queues {
		close(q)
	}
	w.wg.Wait()
}
