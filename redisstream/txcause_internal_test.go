package redisstream

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// txError is a Redis error reply.
type txError string

func (e txError) Error() string { return string(e) }
func (txError) RedisError()     {}

// TestTxCauseTellsTheRefusal: an EXECABORT is reported as the refusal of
// the command that caused it, so a READONLY of a demoted primary (an
// outage) reads as one, not as a plain failure.
func TestTxCauseTellsTheRefusal(t *testing.T) {
	ctx := context.Background()
	ok := redis.NewIntCmd(ctx, "hset")
	refused := redis.NewIntCmd(ctx, "zadd")
	refused.SetErr(txError("READONLY You can't write against a read only replica."))
	abort := txError("EXECABORT Transaction discarded because of previous errors.")
	err := txCause([]redis.Cmder{ok, refused}, abort)
	if !errors.Is(err, refused.Err()) {
		t.Fatalf("txCause = %v, want the READONLY refusal", err)
	}
	c := &Conn{}
	if !errors.Is(c.mapErr(err), mq.ErrUnavailable) {
		t.Errorf("mapErr(%v) does not wrap mq.ErrUnavailable", err)
	}
	if got := txCause(nil, abort); !errors.Is(got, abort) {
		t.Errorf("txCause without commands = %v, want the EXECABORT", got)
	}
	if txCause([]redis.Cmder{ok}, nil) != nil {
		t.Error("txCause of a success is not nil")
	}
}
