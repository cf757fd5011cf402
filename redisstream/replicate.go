package redisstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// This file holds Config.WaitReplicas: writes followed by WAIT on their
// own connection, routed by hand to the node of their slot on a Redis
// Cluster (see the package documentation, "Clusters and replication").

// ErrNotReplicated is wrapped, with mq.ErrUnavailable, by the error of a
// Send or Schedule whose writes fewer replicas acknowledged than
// Config.WaitReplicas (wait_replicas=N) asks for within WaitTimeout. The
// writes may have been made on the primary all the same: retry with the
// same message IDs, and deduplicate on the consumer side.
var ErrNotReplicated = errors.New("redisstream: not acknowledged by as many replicas as wait_replicas asks for")

const (
	// defaultWaitTimeout is Config.WaitTimeout's default (at most half the
	// read timeout).
	defaultWaitTimeout = time.Second
	// waitMargin is how much shorter than the read timeout WaitTimeout
	// must be: the WAIT reply comes up to WaitTimeout after the writes'.
	waitMargin = 250 * time.Millisecond
	// maxRedirects bounds the rounds of MOVED and ASK replies one Send
	// or Schedule follows before it fails as unavailable.
	maxRedirects = 5
)

// setWait checks WaitReplicas and WaitTimeout against client and fills in
// the default WaitTimeout.
func (cfg *Config) setWait(client redis.UniversalClient) error {
	if cfg.WaitReplicas == 0 {
		return nil
	}
	var rt time.Duration // 0 or less: reads have no deadline
	switch cl := client.(type) {
	case *redis.Client:
		rt = cl.Options().ReadTimeout
	case *redis.ClusterClient:
		rt = cl.Options().ReadTimeout
	default:
		return fmt.Errorf("redisstream: WaitReplicas needs a *redis.Client (one server or Sentinel failover) or a *redis.ClusterClient, not a %T", client)
	}
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = defaultWaitTimeout
		if rt > 0 {
			cfg.WaitTimeout = min(cfg.WaitTimeout, rt/2)
		}
	}
	if rt > 0 && cfg.WaitTimeout > rt-waitMargin {
		return fmt.Errorf("redisstream: wait_timeout %v must be at least %v shorter than the read timeout %v, with which the WAIT reply is read: lower wait_timeout or raise read_timeout", cfg.WaitTimeout, waitMargin, rt)
	}
	return nil
}

// redirect is a MOVED or ASK reply of a Redis Cluster node.
type redirect struct {
	addr string
	ask  bool
}

// redirection returns the redirection err is, if it is a MOVED or ASK
// reply. from is the address of the node that replied, for a reply that
// names no host (":PORT").
func redirection(err error, from string) (redirect, bool) {
	var re redis.Error
	if err == nil || !errors.As(err, &re) {
		return redirect{}, false
	}
	f := strings.Fields(re.Error())
	if len(f) != 3 || (f[0] != "MOVED" && f[0] != "ASK") {
		return redirect{}, false
	}
	addr := f[2]
	if strings.HasPrefix(addr, ":") {
		host, _, _ := net.SplitHostPort(from)
		addr = host + addr
	}
	return redirect{addr: addr, ask: f[0] == "ASK"}, true
}

// clusterNodes reloads the cluster's layout (ForEachShard asks a node for
// it before it iterates) and returns the client of every node by address.
func clusterNodes(ctx context.Context, cc *redis.ClusterClient) (map[string]*redis.Client, error) {
	var mu sync.Mutex
	nodes := map[string]*redis.Client{}
	err := cc.ForEachShard(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		nodes[n.Options().Addr] = n
		mu.Unlock()
		return nil
	})
	return nodes, err
}

// nodeBatch is the messages of a Send bound for one node: their XADDs and
// a WAIT go in one pipeline, so on one connection.
type nodeBatch struct {
	node   *redis.Client // nil: the Conn's client (not a cluster)
	asking bool          // each XADD follows ASKING (an ASK redirection)
	idx    []int         // positions in the chunk, in order
}

// addReplicated sends a chunk's XADDs and waits until WaitReplicas
// replicas acknowledged them: per node of their slots one pipeline of
// the XADDs followed by WAIT, whose count covers every earlier write of
// its connection. On a Redis Cluster the messages a node redirects (MOVED
// after a failover or a finished slot migration, ASK during one) are sent
// again to the node named, after reloading the layout; those it wrote
// are not. It fails at the first error or WAIT short of replicas, when the
// caller must send the whole chunk again.
func (c *Conn) addReplicated(ctx context.Context, chunk []*mq.Message, args []*redis.XAddArgs) error {
	cc, _ := c.client.(*redis.ClusterClient)
	todo := make([]int, len(args))
	for i := range todo {
		todo[i] = i
	}
	var to map[int]redirect
	for round := 0; len(todo) > 0; round++ {
		if round > maxRedirects {
			return fmt.Errorf("%w: %d messages still redirected after %d rounds (a slot migration or failover in progress?)", mq.ErrUnavailable, len(todo), maxRedirects)
		}
		if round > 1 {
			if err := sleepCtx(ctx, time.Duration(round)*20*time.Millisecond); err != nil {
				return err
			}
		}
		batches, err := c.route(ctx, cc, args, todo, to)
		if err != nil {
			return c.clusterErr(ctx, err)
		}
		next := map[int]redirect{}
		for _, b := range batches {
			if err := c.addOn(ctx, cc, b, chunk, args, next); err != nil {
				return c.clusterErr(ctx, err)
			}
		}
		todo = todo[:0]
		for i := range next {
			todo = append(todo, i)
		}
		slices.Sort(todo)
		to = next
	}
	return nil
}

// route groups the messages todo by the node to send them to: the one a
// redirection named, else the primary of their stream's slot.
func (c *Conn) route(ctx context.Context, cc *redis.ClusterClient, args []*redis.XAddArgs, todo []int, to map[int]redirect) ([]*nodeBatch, error) {
	if cc == nil {
		return []*nodeBatch{{idx: todo}}, nil
	}
	var nodes map[string]*redis.Client
	if len(to) > 0 {
		var err error
		if nodes, err = clusterNodes(ctx, cc); err != nil {
			return nil, err
		}
	}
	var out []*nodeBatch
	masters := map[string]*redis.Client{} // stream -> primary
	for _, i := range todo {
		var node *redis.Client
		asking := false
		if r, ok := to[i]; ok {
			node = nodes[r.addr]
			asking = r.ask && node != nil
		}
		if node == nil {
			// Not redirected, or to a node the layout does not list
			// yet: the primary of the slot by the (reloaded) layout.
			stream := args[i].Stream
			if node = masters[stream]; node == nil {
				var err error
				if node, err = cc.MasterForKey(ctx, stream); err != nil {
					return nil, err
				}
				masters[stream] = node
			}
		}
		var b *nodeBatch
		for _, o := range out {
			if o.node == node && o.asking == asking {
				b = o
				break
			}
		}
		if b == nil {
			b = &nodeBatch{node: node, asking: asking}
			out = append(out, b)
		}
		b.idx = append(b.idx, i)
	}
	return out, nil
}

// addOn sends b's XADDs and a WAIT in one pipeline. Messages redirected
// go to next; any other failure, or a WAIT short of replicas while some
// XADD succeeded, is the error.
func (c *Conn) addOn(ctx context.Context, cc *redis.ClusterClient, b *nodeBatch, chunk []*mq.Message, args []*redis.XAddArgs, next map[int]redirect) error {
	var pipe redis.Pipeliner
	from := ""
	if b.node != nil {
		pipe, from = b.node.Pipeline(), b.node.Options().Addr
	} else {
		pipe = c.client.Pipeline()
	}
	cmds := make([]*redis.StringCmd, len(b.idx))
	for k, i := range b.idx {
		if b.asking {
			pipe.Do(ctx, "asking")
		}
		cmds[k] = pipe.XAdd(ctx, args[i])
	}
	wait := pipe.Do(ctx, "wait", c.cfg.WaitReplicas, c.cfg.WaitTimeout.Milliseconds())
	_, _ = pipe.Exec(ctx)
	written := 0
	var errs []error
	for k, cmd := range cmds {
		i := b.idx[k]
		err := cmd.Err()
		if err == nil {
			written++
			continue
		}
		if r, ok := redirection(err, from); ok && cc != nil {
			next[i] = r
			continue
		}
		if len(errs) < 3 {
			errs = append(errs, fmt.Errorf("message %s: %w", chunk[i].ID, c.mapErr(err)))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if written == 0 {
		return nil
	}
	n, err := wait.Int64()
	return c.checkWait(n, err, fmt.Sprintf("%d XADDs", written))
}

// checkWait returns nil if WAIT (its reply n, err) counted WaitReplicas
// replicas, else an error saying that what was written may be there
// unreplicated.
func (c *Conn) checkWait(n int64, err error, what string) error {
	if err != nil {
		return fmt.Errorf("WAIT after %s (written, maybe not replicated: retry with the same IDs): %w", what, c.mapErr(err))
	}
	if n < int64(c.cfg.WaitReplicas) {
		return fmt.Errorf("%w: %w: %s acknowledged by %d of %d replicas within %v (written on the primary, maybe not replicated: retry with the same IDs)",
			mq.ErrUnavailable, ErrNotReplicated, what, n, c.cfg.WaitReplicas, c.cfg.WaitTimeout)
	}
	return nil
}

// clusterErr has a Cluster client reload its layout after a failure (a
// dead primary, a node turned replica), so the next call finds the
// slot's new node, and returns err.
func (c *Conn) clusterErr(ctx context.Context, err error) error {
	if cc, ok := c.client.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
	return c.mapErr(err)
}

// execReplicated runs queue's commands in one MULTI/EXEC on a connection
// of the primary of key's slot, then WAIT on the same connection. On a
// Redis Cluster it follows MOVED and ASK (nothing of a transaction that
// was redirected ran).
func (c *Conn) execReplicated(ctx context.Context, key string, queue func(redis.Pipeliner) error) error {
	var to *redirect
	for round := 0; ; round++ {
		var node *redis.Client
		switch cl := c.client.(type) {
		case *redis.Client:
			node = cl
		case *redis.ClusterClient:
			if to != nil {
				nodes, err := clusterNodes(ctx, cl)
				if err != nil {
					return c.clusterErr(ctx, err)
				}
				node = nodes[to.addr]
			}
			if node == nil {
				var err error
				if node, err = cl.MasterForKey(ctx, key); err != nil {
					return c.clusterErr(ctx, err)
				}
			}
		default:
			return fmt.Errorf("redisstream: WaitReplicas needs a *redis.Client or a *redis.ClusterClient, not a %T", c.client)
		}
		conn := node.Conn()
		if to != nil && to.ask && to.addr == node.Options().Addr {
			// ASKING holds through MULTI until EXEC.
			if err := conn.Do(ctx, "asking").Err(); err != nil {
				_ = conn.Close()
				return c.clusterErr(ctx, err)
			}
		}
		cmds, err := conn.TxPipelined(ctx, queue)
		err = txCause(cmds, err)
		if err != nil {
			_ = conn.Close()
			if r, ok := redirectIn(cmds, err, node.Options().Addr); ok && round < maxRedirects {
				if _, cluster := c.client.(*redis.ClusterClient); cluster {
					to = &r
					continue
				}
			}
			return c.clusterErr(ctx, err)
		}
		n, err := conn.Wait(ctx, c.cfg.WaitReplicas, c.cfg.WaitTimeout).Result()
		_ = conn.Close()
		return c.checkWait(n, err, "the transaction")
	}
}

// txCause returns the error of a transaction: for an EXECABORT (Redis
// refused to queue a command: READONLY on a demoted primary, CLUSTERDOWN,
// TRYAGAIN, a redirection) the refusal of the first command, which tells
// an outage from a mistake, else err itself.
func txCause(cmds []redis.Cmder, err error) error {
	if err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
		return err
	}
	for _, cmd := range cmds {
		if cerr := cmd.Err(); cerr != nil && !strings.HasPrefix(cerr.Error(), "EXECABORT") {
			return fmt.Errorf("%w (the transaction was aborted: %v)", cerr, err)
		}
	}
	return err
}

// redirectIn returns the redirection among a transaction's errors.
func redirectIn(cmds []redis.Cmder, err error, from string) (redirect, bool) {
	if r, ok := redirection(err, from); ok {
		return r, true
	}
	for _, cmd := range cmds {
		if r, ok := redirection(cmd.Err(), from); ok {
			return r, true
		}
	}
	return redirect{}, false
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
