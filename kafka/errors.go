package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/IBM/sarama"
	"github.com/eapache/go-resiliency/breaker"
	"github.com/mqkit/mq"
)

// unavailableKErrors are the broker error codes that mean the cluster
// cannot serve the request right now (no leader, not enough in-sync
// replicas, a coordinator or controller moving, a request timing out on
// the broker): Kafka's own retriable errors about availability.
var unavailableKErrors = []sarama.KError{
	sarama.ErrLeaderNotAvailable,
	sarama.ErrNotLeaderForPartition,
	sarama.ErrRequestTimedOut,
	sarama.ErrBrokerNotAvailable,
	sarama.ErrReplicaNotAvailable,
	sarama.ErrNetworkException,
	sarama.ErrOffsetsLoadInProgress,
	sarama.ErrConsumerCoordinatorNotAvailable,
	sarama.ErrNotCoordinatorForConsumer,
	sarama.ErrNotEnoughReplicas,
	sarama.ErrNotEnoughReplicasAfterAppend,
	sarama.ErrNotController,
	sarama.ErrKafkaStorageError,
	sarama.ErrFencedLeaderEpoch,
	sarama.ErrUnknownLeaderEpoch,
	sarama.ErrOffsetNotAvailable,
	sarama.ErrPreferredLeaderNotAvailable,
	sarama.ErrEligibleLeadersNotAvailable,
}

// unavailable reports whether err is a transient failure to reach the
// cluster or to be served by it: no broker reachable (sarama's
// ErrOutOfBrokers, a refused, reset or timed-out connection, a connection
// closed mid-request), sarama's circuit breaker open after repeated
// failures, or a broker error code that says the data has no leader or too
// few replicas right now.
func unavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// context.DeadlineExceeded is a net.Error too, but it is the
		// caller's deadline, not the broker's failure.
		return false
	}
	switch {
	case errors.Is(err, sarama.ErrOutOfBrokers),
		errors.Is(err, sarama.ErrNotConnected),
		errors.Is(err, sarama.ErrControllerNotAvailable),
		errors.Is(err, breaker.ErrBreakerOpen),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, net.ErrClosed):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		// Dial, read and write failures, timeouts and failed name
		// lookups of a broker address.
		return true
	}
	for _, k := range unavailableKErrors {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

// classify makes an error of a Kafka operation checkable with the mq
// sentinels: it wraps mq.ErrUnavailable around a transient outage (see
// unavailable) and mq.ErrClosed around a use of a closed sarama client or
// producer, keeping err wrapped too, so errors.Is sees both. Other errors,
// nil, and errors already wrapping the sentinel are returned as they are.
// A context's error is never classified: the caller's deadline passing
// says nothing about the broker.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mq.ErrClosed) || errors.Is(err, mq.ErrUnavailable):
		return err
	case errors.Is(err, sarama.ErrClosedClient), errors.Is(err, sarama.ErrShuttingDown), errors.Is(err, sarama.ErrClosedConsumerGroup):
		return fmt.Errorf("%w: %w", mq.ErrClosed, err)
	case unavailable(err):
		return fmt.Errorf("%w: %w", mq.ErrUnavailable, err)
	}
	return err
}
