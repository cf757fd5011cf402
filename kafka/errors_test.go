package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/eapache/go-resiliency/breaker"
	"github.com/mqkit/mq"
)

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
		closed      bool
	}{
		{"out of brokers", sarama.ErrOutOfBrokers, true, false},
		{"EOF", io.EOF, true, false},
		{"unexpected EOF", io.ErrUnexpectedEOF, true, false},
		{"breaker open", breaker.ErrBreakerOpen, true, false},
		{"connection refused", refused, true, false},
		{"bare ECONNREFUSED", syscall.ECONNREFUSED, true, false},
		{"connection reset", fmt.Errorf("write: %w", syscall.ECONNRESET), true, false},
		{"read timeout", timeout, true, false},
		{"dns", &net.DNSError{Err: "no such host", Name: "kafka-1", IsNotFound: true}, true, false},
		{"not leader", sarama.ErrNotLeaderForPartition, true, false},
		{"leader not available", sarama.ErrLeaderNotAvailable, true, false},
		{"not enough replicas", sarama.ErrNotEnoughReplicas, true, false},
		{"not enough replicas after append", sarama.ErrNotEnoughReplicasAfterAppend, true, false},
		{"request timed out", sarama.ErrRequestTimedOut, true, false},
		{"not controller", sarama.ErrNotController, true, false},
		{"coordinator not available", sarama.ErrConsumerCoordinatorNotAvailable, true, false},
		{"not coordinator", sarama.ErrNotCoordinatorForConsumer, true, false},
		{"controller not available", sarama.ErrControllerNotAvailable, true, false},
		{"topic error", &sarama.TopicError{Err: sarama.ErrNotController}, true, false},
		{"wrapped twice", fmt.Errorf("kafka: metadata: %w", fmt.Errorf("x: %w", sarama.ErrOutOfBrokers)), true, false},
		{"joined producer errors", errors.Join(errors.New("a"), fmt.Errorf("message 1: %w", sarama.ErrNotEnoughReplicas)), true, false},

		{"closed client", sarama.ErrClosedClient, false, true},
		{"shutting down", sarama.ErrShuttingDown, false, true},
		{"closed group", sarama.ErrClosedConsumerGroup, false, true},

		{"nil", nil, false, false},
		{"deadline", context.DeadlineExceeded, false, false},
		{"wrapped deadline", fmt.Errorf("kafka: produce: %w", context.DeadlineExceeded), false, false},
		{"canceled", context.Canceled, false, false},
		{"too large", sarama.ErrMessageSizeTooLarge, false, false},
		{"unknown topic", sarama.ErrUnknownTopicOrPartition, false, false},
		{"authorization", sarama.ErrTopicAuthorizationFailed, false, false},
		{"sasl", sarama.ErrSASLAuthenticationFailed, false, false},
		{"plain", errors.New("boom"), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err)
			if tc.err == nil {
				if got != nil {
					t.Fatalf("classify(nil) = %v", got)
				}
				return
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("classify(%v) = %v, no longer wraps the original error", tc.err, got)
			}
			if u := errors.Is(got, mq.ErrUnavailable); u != tc.unavailable {
				t.Errorf("classify(%v) = %v: wraps mq.ErrUnavailable = %v, want %v", tc.err, got, u, tc.unavailable)
			}
			if c := errors.Is(got, mq.ErrClosed); c != tc.closed {
				t.Errorf("classify(%v) = %v: wraps mq.ErrClosed = %v, want %v", tc.err, got, c, tc.closed)
			}
			if mq.NotAnAttempt(got) != tc.unavailable {
				t.Errorf("mq.NotAnAttempt(classify(%v)) = %v", tc.err, !tc.unavailable)
			}
			if again := classify(got); again != got {
				t.Errorf("classify is not idempotent: %v, then %v", got, again)
			}
		})
	}
}

// TestConnectRefusedIsUnavailable: connecting to an address where no
// broker listens fails with an error wrapping mq.ErrUnavailable.
func TestConnectRefusedIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now: connections are refused
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = NewConn(ctx, Config{Brokers: []string{addr}})
	if !errors.Is(err, mq.ErrUnavailable) {
		t.Fatalf("NewConn to a dead broker = %v, want an error wrapping mq.ErrUnavailable", err)
	}
	if !errors.Is(err, sarama.ErrOutOfBrokers) {
		t.Errorf("NewConn to a dead broker = %v, no longer wraps sarama's error", err)
	}
}
