package redisstream

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq/internal/backoff"
)

// reader is a subscription's own connection to Redis, on which it runs
// every command that moves entries into its pending list: XREADGROUP
// (new entries and its pending history) and XAUTOCLAIM.
//
// Two reasons. A blocking read on a connection of its own can be
// interrupted with CLIENT UNBLOCK when Receive is cancelled, instead of
// waiting for the block time to pass. And go-redis never retries a
// command on it: once a command failed on a dedicated connection, the
// connection is bad and the retry fails too, so the failure reaches the
// subscription. On the shared pool go-redis would resend a read whose
// reply was lost, and the first read's entries would sit in the pending
// list unseen while the second one's were delivered: an outage would
// reorder keys without a trace. After an error the reader makes a new
// connection for the next command.
//
// On a Redis Cluster, a failed command has the next connection made to
// the slot's primary by a freshly loaded layout (after a failover or a
// slot migration the client's may be stale, and a redirection met on a
// node's own connection does not refresh it), or to the node a MOVED
// reply named if the layout knows it (a node that has just restarted may
// still describe the old layout). An ASK redirection (the slot is being
// migrated, the stream is on the importing node already) has the reader
// connect to the node named and send ASKING before each command, for up
// to askHold, after which it asks the slot's owner again.
type reader struct {
	client redis.UniversalClient
	key    string // a stream key, to find the Cluster node

	node *redis.Client // the server the connection is on; nil: no dedicated connection
	conn *redis.Conn
	id   int64

	reload   bool      // Cluster: reload the layout before connecting
	to       string    // Cluster: the node the last redirection named ("": none)
	ask      bool      // to is an ASK redirection: send ASKING before each command
	askUntil time.Time // when to stop following an ASK
}

// askHold is how long a reader follows an ASK redirection.
const askHold = 5 * time.Second

// cmd returns the connection to run a command on, connecting if needed.
// For a client type it does not know (neither a *redis.Client, which
// covers Sentinel failover, nor a *redis.ClusterClient) it returns the
// client itself, whose retries the guarantee above does not cover.
func (r *reader) cmd(ctx context.Context) (redis.Cmdable, error) {
	if r.ask && !time.Now().Before(r.askUntil) {
		r.to, r.ask = "", false
	}
	if r.conn != nil {
		if err := r.asking(ctx); err != nil {
			return nil, err
		}
		return r.conn, nil
	}
	var node *redis.Client
	switch cl := r.client.(type) {
	case *redis.Client:
		node = cl
	case *redis.ClusterClient:
		if r.reload || r.to != "" {
			nodes, err := clusterNodes(ctx, cl)
			if err != nil {
				return nil, err
			}
			r.reload = false
			if node = nodes[r.to]; node == nil || !r.ask {
				r.to, r.ask = "", false // a MOVED is followed once
			}
		}
		if node == nil {
			n, err := cl.MasterForKey(ctx, r.key)
			if err != nil {
				return nil, err
			}
			node = n
		}
	default:
		return r.client, nil
	}
	conn := node.Conn()
	id, err := conn.ClientID(ctx).Result()
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	r.node, r.conn, r.id = node, conn, id
	if err := r.asking(ctx); err != nil {
		return nil, err
	}
	return conn, nil
}

// asking sends ASKING on the connection while an ASK redirection is
// followed, so that the next command runs on the importing node.
func (r *reader) asking(ctx context.Context) error {
	if !r.ask {
		return nil
	}
	err := r.conn.Do(ctx, "asking").Err()
	r.done(err)
	return err
}

// done takes note of a command's result: after an error other than a
// reply of Redis's about the command (no entries, no group), the next
// command gets a new connection (this one may be broken, or on a server
// that no longer holds the stream), on the node of the slot by a reloaded
// Cluster layout.
func (r *reader) done(err error) {
	if err == nil || errors.Is(err, redis.Nil) || isNoGroup(err) {
		return
	}
	from := ""
	if r.node != nil {
		from = r.node.Options().Addr
	}
	r.close()
	if _, ok := r.client.(*redis.ClusterClient); ok {
		r.reload, r.to, r.ask = true, "", false
		if red, ok := redirection(err, from); ok {
			r.to, r.ask = red.addr, red.ask
			if red.ask {
				r.askUntil = time.Now().Add(askHold)
			}
		}
	}
}

func (r *reader) close() {
	if r.conn != nil {
		_ = r.conn.Close()
		r.node, r.conn = nil, nil
	}
}

// read runs a blocking XREADGROUP (see blocking).
func (r *reader) read(ctx context.Context, stop <-chan struct{}, a *redis.XReadGroupArgs) ([]redis.XStream, error) {
	return r.blocking(ctx, stop, func(c redis.Cmdable, bg context.Context) *redis.XStreamSliceCmd {
		if r.conn == nil {
			a.Block = min(a.Block, time.Second) // not interruptible
		}
		return c.XReadGroup(bg, a)
	})
}

// blocking runs a blocking read that run makes on c with context bg. When
// ctx is done or stop is closed while it waits, it interrupts the wait
// and returns what the read returned (entries delivered in the meantime
// are not lost: the caller delivers them). A timeout gives no entries and
// no error.
func (r *reader) blocking(ctx context.Context, stop <-chan struct{}, run func(c redis.Cmdable, bg context.Context) *redis.XStreamSliceCmd) ([]redis.XStream, error) {
	cl, err := r.cmd(ctx)
	if err != nil {
		return nil, err
	}
	var cmd *redis.XStreamSliceCmd
	bg := context.WithoutCancel(ctx)
	if r.conn == nil {
		// An unknown client type: a plain read, not interruptible.
		cmd = run(cl, bg)
	} else {
		done := make(chan struct{})
		go func() {
			defer close(done)
			cmd = run(cl, bg)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			r.interrupt(done)
		case <-stop:
			r.interrupt(done)
		}
	}
	res, err := cmd.Result()
	r.done(err)
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return res, err
}

// interrupt unblocks the read until it returns.
func (r *reader) interrupt(done <-chan struct{}) {
	for n := 1; ; n++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.node.ClientUnblock(ctx, r.id).Err()
		cancel()
		select {
		case <-done:
			return
		case <-time.After(backoff.Exp(n, 20*time.Millisecond, 500*time.Millisecond)):
		}
	}
}
