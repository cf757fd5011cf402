package cluster_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/redisstream"
)

// redisSettings are the two ways the Redis tests produce: as the primary
// answers (Redis replication is asynchronous: a failover may lose what
// was acknowledged, and the tests report how much), and with
// wait_replicas=1, which redisstream documents as the setting that makes
// an acknowledged message survive the loss of its primary.
var redisSettings = []struct {
	name, params string
	safe         bool
}{
	{"default (async replication)", "", false},
	{"wait_replicas=1", "wait_replicas=1", true},
}

// TestRedisClusterFaults fails a Redis Cluster of three primaries and three
// replicas under steady load on one unsharded topic, once per setting of
// redisSettings: the primary of the topic's slot is SIGKILLed and, once
// its replica was promoted (cluster-node-timeout 2 s), started again (it
// rejoins as a replica); then the slot is moved to another primary
// (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) while
// messages are produced and consumed, the slot left half-moved for a
// second so that clients meet ASK redirections; then the slot's primary is
// paused past cluster-node-timeout (its replica is promoted while it still
// believes it is the primary) and unpaused; last, another node is stopped
// and started.
func TestRedisClusterFaults(t *testing.T) {
	c := testbed.RedisClusterHA(t)
	checkScheduleReplicated(t, c.URL)
	for i, s := range redisSettings {
		t.Run(cmp.Or(s.params, "default"), func(t *testing.T) {
			topic := "orders-" + strconv.Itoa(i)
			w := startLoad(t, redisURL(c.URL, s.params), topic, loadOptions{Settle: 2 * time.Second, Drain: 30 * time.Second})
			w.Fault(t, "kill the slot's primary", func(ctx context.Context) error {
				primary, err := slotPrimary(ctx, c, topic, nil)
				if err != nil {
					return err
				}
				n := c.Node(primary)
				if err := n.Kill(ctx); err != nil {
					return err
				}
				promoted, err := slotPrimary(ctx, c, topic, n)
				if err != nil {
					return err
				}
				t.Logf("slot of %q: primary %s killed, replica %s promoted", topic, primary, promoted)
				if err := n.Start(ctx); err != nil {
					return err
				}
				return testbed.WaitRedisHA(ctx, c)
			})
			w.Fault(t, "move the slot to another primary", func(ctx context.Context) error {
				return moveSlot(ctx, t, c, topic)
			})
			w.Fault(t, "pause the slot's primary 8s", func(ctx context.Context) error {
				primary, err := slotPrimary(ctx, c, topic, nil)
				if err != nil {
					return err
				}
				n := c.Node(primary)
				if err := n.Pause(ctx); err != nil {
					return err
				}
				// Frozen past cluster-node-timeout (2 s): its replica takes
				// over while it still believes it is the primary.
				promoted, err := slotPrimary(ctx, c, topic, n)
				if err != nil {
					return err
				}
				time.Sleep(8 * time.Second)
				t.Logf("slot of %q: primary %s paused, replica %s promoted", topic, primary, promoted)
				if err := n.Unpause(ctx); err != nil {
					return err
				}
				return testbed.WaitRedisHA(ctx, c)
			})
			w.Fault(t, "stop another node, start it", func(ctx context.Context) error {
				primary, err := slotPrimary(ctx, c, topic, nil)
				if err != nil {
					return err
				}
				for _, n := range c.Nodes {
					if n.Addr == primary {
						continue
					}
					t.Logf("stopping %s (the slot's primary is %s)", n.Addr, primary)
					if err := n.Stop(ctx); err != nil {
						return err
					}
					if err := n.Start(ctx); err != nil {
						return err
					}
					return testbed.WaitRedisHA(ctx, c)
				}
				return errors.New("no node besides the slot's primary")
			})
			w.Finish(t, "redis-cluster", s.name, s.safe)
		})
	}
}

// TestRedisSentinelFaults fails the primary of a Sentinel-managed pair
// under steady load, once per setting of redisSettings: a graceful
// SENTINEL FAILOVER, then a SIGKILL of the primary (the sentinels promote
// the replica after down-after-milliseconds, 2 s) and a start of the
// killed node, which the sentinels turn into a replica, then a pause of
// the primary past down-after-milliseconds and its unpause (demoted once
// the sentinels see it again).
func TestRedisSentinelFaults(t *testing.T) {
	c := testbed.RedisSentinelHA(t)
	checkScheduleReplicated(t, c.URL)
	for i, s := range redisSettings {
		t.Run(cmp.Or(s.params, "default"), func(t *testing.T) {
			topic := "orders-" + strconv.Itoa(i)
			w := startLoad(t, redisURL(c.URL, s.params), topic, loadOptions{Settle: 2 * time.Second, Drain: 30 * time.Second})
			w.Fault(t, "SENTINEL FAILOVER", func(ctx context.Context) error {
				old, err := sentinelPrimary(ctx, c, "")
				if err != nil {
					return err
				}
				sc := redis.NewSentinelClient(&redis.Options{Addr: c.Sentinels[0].Addr, DisableIdentity: true})
				defer func() { _ = sc.Close() }()
				if err := sc.Failover(ctx, testbed.RedisSentinelMaster).Err(); err != nil {
					return fmt.Errorf("SENTINEL FAILOVER: %w", err)
				}
				now, err := sentinelPrimary(ctx, c, old)
				if err != nil {
					return err
				}
				t.Logf("failover: primary %s -> %s", old, now)
				return testbed.WaitRedisHA(ctx, c)
			})
			w.Fault(t, "kill the primary", func(ctx context.Context) error {
				old, err := sentinelPrimary(ctx, c, "")
				if err != nil {
					return err
				}
				n := c.Node(old)
				if err := n.Kill(ctx); err != nil {
					return err
				}
				now, err := sentinelPrimary(ctx, c, old)
				if err != nil {
					return err
				}
				t.Logf("primary %s killed, %s promoted", old, now)
				if err := n.Start(ctx); err != nil {
					return err
				}
				return testbed.WaitRedisHA(ctx, c)
			})
			w.Fault(t, "pause the primary 8s", func(ctx context.Context) error {
				old, err := sentinelPrimary(ctx, c, "")
				if err != nil {
					return err
				}
				n := c.Node(old)
				if err := n.Pause(ctx); err != nil {
					return err
				}
				// Frozen past down-after-milliseconds (2 s): the sentinels
				// promote the replica, and demote the old primary once it
				// answers again.
				now, err := sentinelPrimary(ctx, c, old)
				if err != nil {
					return err
				}
				time.Sleep(8 * time.Second)
				t.Logf("primary %s paused, %s promoted", old, now)
				if err := n.Unpause(ctx); err != nil {
					return err
				}
				return testbed.WaitRedisHA(ctx, c)
			})
			w.Finish(t, "redis-sentinel", s.name, s.safe)
		})
	}
}

// redisURL adds the tests' parameters to a cluster's URL: a small
// claim_idle, so that entries of a consumer cut off by a fault come back
// soon.
func redisURL(base, params string) string {
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	u := base + sep + "claim_idle=2s"
	if params != "" {
		u += "&" + params
	}
	return u
}

// checkScheduleReplicated schedules a message with wait_replicas=1 (a
// MULTI/EXEC and a WAIT on the primary of the schedule's slot), which
// must succeed on a healthy cluster and leave the message scheduled.
func checkScheduleReplicated(t *testing.T, base string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := mq.Open(ctx, redisURL(base, "wait_replicas=1"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cl.Close() }()
	const topic = "scheduled"
	if err := cl.Producer().Produce(ctx, topic, &mq.Message{Body: []byte("later"), DeliverAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatalf("Produce of a delayed message with wait_replicas=1: %v", err)
	}
	st, err := cl.Conn().(*redisstream.Conn).Scheduled(ctx, topic)
	if err != nil || st.Waiting != 1 {
		t.Fatalf("Scheduled = %+v, %v; want 1 waiting", st, err)
	}
}

// nodeClient is a client of one Redis node that does not retry.
func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, ReadTimeout: 5 * time.Second, MaxRetries: -1, DisableIdentity: true})
}

// poll calls check every 100 ms until it returns nil or ctx ends.
func poll(ctx context.Context, what string, check func(ctx context.Context) error) error {
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// slotPrimary returns the address of the primary that serves key's slot,
// asking the nodes other than not (nil: any) and, with not set, waiting
// until they name a live primary other than not with cluster_state:ok.
func slotPrimary(ctx context.Context, c *testbed.Cluster, key string, not *testbed.Broker) (string, error) {
	var primary string
	err := poll(ctx, "primary of the slot of "+key, func(ctx context.Context) error {
		for _, n := range c.Nodes {
			if n == not {
				continue
			}
			cl := nodeClient(n.Addr)
			p, err := slotOwner(ctx, cl, key)
			var info string
			if err == nil {
				info, err = cl.ClusterInfo(ctx).Result()
			}
			_ = cl.Close()
			if err != nil {
				continue
			}
			if not != nil && (p == not.Addr || !strings.Contains(info, "cluster_state:ok")) {
				return fmt.Errorf("node %s: primary %s, %s", n.Addr, p, strings.SplitN(info, "\n", 2)[0])
			}
			primary = p
			return nil
		}
		return errors.New("no node answered")
	})
	return primary, err
}

// slotOwner asks cl which primary serves key's slot.
func slotOwner(ctx context.Context, cl *redis.Client, key string) (string, error) {
	slot, err := cl.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", err
	}
	shards, err := cl.ClusterShards(ctx).Result()
	if err != nil {
		return "", err
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if slot < r.Start || slot > r.End {
				continue
			}
			for _, n := range sh.Nodes {
				if n.Role == "master" && n.Health == "online" {
					return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10)), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no online primary serves slot %d", slot)
}

// moveSlot moves the slot of key from its primary to another one, as
// redis-cli --cluster reshard does, and waits until the cluster is whole.
func moveSlot(ctx context.Context, t *testing.T, c *testbed.Cluster, key string) error {
	src, err := slotPrimary(ctx, c, key, nil)
	if err != nil {
		return err
	}
	dst := ""
	for _, n := range c.Nodes {
		if n.Addr == src {
			continue
		}
		cl := nodeClient(n.Addr)
		role, err := cl.Do(ctx, "role").Slice()
		_ = cl.Close()
		if err == nil && len(role) > 0 && role[0] == "master" {
			dst = n.Addr
			break
		}
	}
	if dst == "" {
		return errors.New("no other primary to move the slot to")
	}
	s, d := nodeClient(src), nodeClient(dst)
	defer func() { _ = s.Close(); _ = d.Close() }()
	slot, err := s.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return err
	}
	srcID, err := s.ClusterMyID(ctx).Result()
	if err != nil {
		return err
	}
	dstID, err := d.ClusterMyID(ctx).Result()
	if err != nil {
		return err
	}
	if err := d.Do(ctx, "cluster", "setslot", slot, "importing", srcID).Err(); err != nil {
		return fmt.Errorf("SETSLOT IMPORTING on %s: %w", dst, err)
	}
	if err := s.Do(ctx, "cluster", "setslot", slot, "migrating", dstID).Err(); err != nil {
		return fmt.Errorf("SETSLOT MIGRATING on %s: %w", src, err)
	}
	host, port, _ := net.SplitHostPort(dst)
	moved := 0
	for {
		keys, err := s.ClusterGetKeysInSlot(ctx, int(slot), 100).Result()
		if err != nil {
			return fmt.Errorf("GETKEYSINSLOT: %w", err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 10000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := s.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("MIGRATE %v to %s: %w", keys, dst, err)
		}
		moved += len(keys)
	}
	// Half-moved for a while: the keys are on dst, the slot still src's,
	// so clients are sent there with ASK.
	time.Sleep(time.Second)
	if err := d.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err(); err != nil {
		return fmt.Errorf("SETSLOT NODE on %s: %w", dst, err)
	}
	if err := s.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err(); err != nil {
		return fmt.Errorf("SETSLOT NODE on %s: %w", src, err)
	}
	for _, n := range c.Nodes {
		if n.Addr == src || n.Addr == dst {
			continue
		}
		cl := nodeClient(n.Addr)
		role, err := cl.Do(ctx, "role").Slice()
		if err == nil && len(role) > 0 && role[0] == "master" {
			err = cl.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err()
		}
		_ = cl.Close()
		if err != nil {
			return fmt.Errorf("SETSLOT NODE on %s: %w", n.Addr, err)
		}
	}
	t.Logf("slot %d of %q (%d keys) moved from %s to %s", slot, key, moved, src, dst)
	return testbed.WaitRedisHA(ctx, c)
}

// sentinelPrimary returns the primary the sentinels name; with not set,
// it waits until all of them name another one.
func sentinelPrimary(ctx context.Context, c *testbed.Cluster, not string) (string, error) {
	var primary string
	err := poll(ctx, "sentinels' primary", func(ctx context.Context) error {
		primary = ""
		for _, s := range c.Sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, DialTimeout: time.Second, MaxRetries: -1, DisableIdentity: true})
			a, err := sc.GetMasterAddrByName(ctx, testbed.RedisSentinelMaster).Result()
			_ = sc.Close()
			if err != nil {
				return err
			}
			p := net.JoinHostPort(a[0], a[1])
			switch {
			case p == not:
				return fmt.Errorf("sentinel %s still names %s", s.Addr, p)
			case primary != "" && p != primary:
				return fmt.Errorf("sentinels disagree: %s and %s", primary, p)
			}
			primary = p
		}
		return nil
	})
	return primary, err
}
