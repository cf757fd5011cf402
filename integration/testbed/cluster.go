package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// A Cluster is a replicated broker of several nodes, each in a container of
// its own serving clients at an address of its own on the loopback network
// (127.0.X.N), started by KafkaCluster, RabbitMQCluster, RedisClusterHA or
// RedisSentinelHA. Kafka and Redis nodes use host networking and listen on
// their address; RabbitMQ nodes each have a network namespace of their
// own (Erlang's port mapper cannot be shared) and publish their AMQP port
// on their address. Nothing listens beyond the loopback network.
//
// Every node is a *Broker: Stop, Start, Kill, Pause, Unpause and Restart
// act on that node alone, as the outage of one machine. Only one cluster
// should run at a time on a small machine (each one starts three to eight
// processes).
type Cluster struct {
	// Kind is the broker type of the nodes: KindKafka, KindRabbitMQ,
	// KindRedisCluster (RedisClusterHA) or KindRedisSentinel
	// (RedisSentinelHA).
	Kind Kind
	// URL is what mq.Open takes, naming every node (or, for Sentinel,
	// every sentinel) so that the client can start from any live one.
	URL string
	// Nodes are the broker nodes, in the order they were started (the
	// first one is the initial primary where the cluster has one).
	Nodes []*Broker
	// Sentinels are the Redis Sentinel processes (RedisSentinelHA only).
	Sentinels []*Broker
}

// Node returns the node whose client address is addr ("host:port"), or nil.
func (c *Cluster) Node(addr string) *Broker {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Addrs returns the client addresses of the nodes.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Terminate stops and removes every container of the cluster. The test
// starters call it in t.Cleanup.
func (c *Cluster) Terminate(ctx context.Context) error {
	if c == nil {
		return nil
	}
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, b := range append(append([]*Broker(nil), c.Nodes...), c.Sentinels...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Terminate(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// clusterStart starts a cluster with start and terminates it when the test
// ends, skipping or failing t as the single-broker starters do.
func clusterStart(t testing.TB, kind Kind, start func(ctx context.Context) (*Cluster, error)) *Cluster {
	t.Helper()
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := start(ctx)
	if !keep(t, kind, string(kind)+" cluster", c, err) {
		return nil
	}
	t.Logf("testbed: %s cluster of %d nodes ready at %s in %.1fs", kind, len(c.Nodes)+len(c.Sentinels), withoutPassword(c.URL), time.Since(begin).Seconds())
	return c
}

// startNode runs one node of a cluster: req is its container (host
// networking), sp says how to probe it and how long to wait, addr and url
// are its own client address and URL (rawURL). It returns once sp.ready accepts the
// node (a node that can only be ready with its peers should have a ready
// that accepts it alone, e.g. a TCP connect; the cluster's starter waits
// for the whole).
func startNode(ctx context.Context, sp *spec, image string, req testcontainers.ContainerRequest, addr, rawURL string) (*Broker, error) {
	if sp.ready == nil {
		sp.ready = tcpReady
	}
	req.Image = image
	b := &Broker{Kind: sp.kind, URL: rawURL, Addr: addr, Image: image, spec: sp}
	if err := b.launch(ctx, req); err != nil {
		return nil, err
	}
	return b, nil
}

// tcpReady accepts a node once its client port takes a TCP connection.
func tcpReady(ctx context.Context, b *Broker) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.Addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// clusterImage resolves and checks the image of kind's broker, as Start
// does for one broker.
func clusterImage(ctx context.Context, kind Kind) (string, error) {
	sp, ok := specs[kind]
	if !ok {
		return "", fmt.Errorf("testbed: unknown broker kind %q", kind)
	}
	cli, err := docker(ctx)
	if err != nil {
		return "", err
	}
	image := imageFromEnv(sp.envKey, sp.defaultImage)
	if err := ensureImage(ctx, cli, image, sp.envKey); err != nil {
		return "", err
	}
	return image, nil
}

// loopbackFree reports an error when something already listens on one of
// addrs (a cluster's fixed node addresses), naming it.
func loopbackFree(addrs ...string) error {
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("testbed: cluster address %s is taken (another cluster still running?): %w", a, err)
		}
		_ = l.Close()
	}
	return nil
}

// waitFor polls check every 200 ms until it returns nil or ctx ends, then
// returns the last error with what.
func waitFor(ctx context.Context, what string, check func(context.Context) error) error {
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: %s: %v (%w)", what, last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// withoutPassword returns raw with any password replaced by "xxxxx", for
// log lines.
func withoutPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
