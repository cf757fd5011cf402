package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
)

// The fixed loopback addresses of the replicated Redis test beds.
var (
	redisClusterAddrs = []string{"127.0.3.1:6379", "127.0.3.2:6379", "127.0.3.3:6379", "127.0.3.4:6379", "127.0.3.5:6379", "127.0.3.6:6379"}
	redisHAAddrs      = []string{"127.0.4.1:6379", "127.0.4.2:6379"}
	redisSentinels    = []string{"127.0.4.3:26379", "127.0.4.4:26379", "127.0.4.5:26379"}
)

// RedisSentinelMaster is the master name the sentinels of RedisSentinelHA
// monitor.
const RedisSentinelMaster = "mq"

// redisNodeFlags are the redis-server settings shared by every node of the
// replicated test beds: durable (an append-only file fsynced on every
// write, on replicas too, so a restarted node keeps what it had) and quick
// to resynchronise a replica (no diskless-sync delay).
const redisNodeFlags = `protected-mode no
save ""
dir /data
appendonly yes
appendfsync always
repl-diskless-sync-delay 0
`

// RedisClusterHA starts a Redis Cluster of three primaries and three
// replicas, one redis-server per container with host networking on
// 127.0.3.1 to 127.0.3.6, port 6379 (cluster bus 16379), created with
// redis-cli --cluster create --cluster-replicas 1, and terminates it when
// the test ends. URL is redis+cluster://127.0.3.1:6379,...,127.0.3.6:6379.
//
// Every node runs with cluster-node-timeout 2000 (a dead primary's
// replica is promoted a few seconds after it stopped answering),
// appendonly yes and appendfsync always, and announces its own address.
// Its data and nodes.conf live in the container, so a node stopped or
// killed and started again comes back with them (a former primary rejoins
// as a replica of the node promoted in its place). The cluster is ready:
// WaitRedisHA accepted it. Which node serves which slots, and which
// replica follows which primary, is redis-cli's choice: ask the nodes
// (CLUSTER SHARDS) rather than assume it.
//
// The addresses are fixed: only one RedisClusterHA runs at a time on a
// machine.
func RedisClusterHA(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return clusterStart(t, KindRedisCluster, func(ctx context.Context) (*Cluster, error) {
		return startRedisClusterHA(ctx, opts)
	})
}

// RedisSentinelHA starts a Sentinel-managed Redis: a primary on
// 127.0.4.1:6379, a replica of it on 127.0.4.2:6379, and three sentinels
// on 127.0.4.3 to 127.0.4.5, port 26379, monitoring it as master "mq"
// with quorum 2, down-after-milliseconds 2000 and failover-timeout 10000,
// each in a container of its own with host networking; it terminates them
// when the test ends. Nodes are the primary and the replica (in that order
// at the start; a failover swaps their roles), Sentinels the three
// sentinels. URL is
// redis+sentinel://127.0.4.3:26379,127.0.4.4:26379,127.0.4.5:26379/0?master=mq.
//
// The Redis nodes are as durable as RedisClusterHA's. Every process keeps
// its configuration file in its container, where Sentinel rewrites it (the
// current primary, the known replicas and sentinels, the epoch) and so
// does a Redis node whose role a sentinel changed, so a stopped or killed
// process started again resumes its last role. The set is ready:
// WaitRedisHA accepted it.
func RedisSentinelHA(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return clusterStart(t, KindRedisSentinel, func(ctx context.Context) (*Cluster, error) {
		return startRedisSentinelHA(ctx, opts)
	})
}

func startRedisClusterHA(ctx context.Context, opts []Option) (*Cluster, error) {
	if err := loopbackFree(append(redisClusterAddrs, redisBusAddrs(redisClusterAddrs)...)...); err != nil {
		return nil, err
	}
	image, err := clusterImage(ctx, KindRedisCluster)
	if err != nil {
		return nil, err
	}
	o := redisOptions(opts)
	nodes, err := redisStartNodes(ctx, len(redisClusterAddrs), func(i int) (*Broker, error) {
		addr := redisClusterAddrs[i]
		ip, _, _ := net.SplitHostPort(addr)
		conf := fmt.Sprintf("bind %s\nport 6379\n%scluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\ncluster-announce-ip %s\n", ip, redisNodeFlags, ip)
		req := redisNodeRequest(conf, "redis.conf", "", o)
		return startNode(ctx, redisNodeSpec(KindRedisCluster), image, req, addr, "redis://"+addr+"/0")
	})
	if err != nil {
		return nil, err
	}
	c := &Cluster{Kind: KindRedisCluster, URL: "redis+cluster://" + strings.Join(redisClusterAddrs, ","), Nodes: nodes}
	fail := func(err error) (*Cluster, error) {
		_ = c.Terminate(context.WithoutCancel(ctx))
		return nil, err
	}
	cmd := append(append([]string{"redis-cli", "--cluster", "create"}, redisClusterAddrs...), "--cluster-replicas", "1", "--cluster-yes")
	code, out, err := nodes[0].Container().Exec(ctx, cmd, tcexec.Multiplexed())
	if err != nil {
		return fail(fmt.Errorf("testbed: redis-cli --cluster create: %w", err))
	}
	if code != 0 {
		text, _ := io.ReadAll(out)
		return fail(fmt.Errorf("testbed: redis-cli --cluster create exited with %d:\n%s", code, text))
	}
	if err := WaitRedisHA(ctx, c); err != nil {
		return fail(err)
	}
	return c, nil
}

func startRedisSentinelHA(ctx context.Context, opts []Option) (*Cluster, error) {
	if err := loopbackFree(append(append([]string(nil), redisHAAddrs...), redisSentinels...)...); err != nil {
		return nil, err
	}
	image, err := clusterImage(ctx, KindRedisSentinel)
	if err != nil {
		return nil, err
	}
	o := redisOptions(opts)
	primaryIP, _, _ := net.SplitHostPort(redisHAAddrs[0])
	all := append(append([]string(nil), redisHAAddrs...), redisSentinels...)
	brokers, err := redisStartNodes(ctx, len(all), func(i int) (*Broker, error) {
		addr := all[i]
		ip, _, _ := net.SplitHostPort(addr)
		if i < len(redisHAAddrs) {
			conf := fmt.Sprintf("bind %s\nport 6379\n%sreplica-announce-ip %s\n", ip, redisNodeFlags, ip)
			if i > 0 {
				conf += fmt.Sprintf("replicaof %s 6379\n", primaryIP)
			}
			req := redisNodeRequest(conf, "redis.conf", "", o)
			return startNode(ctx, redisNodeSpec(KindRedisSentinel), image, req, addr, "redis://"+addr+"/0")
		}
		conf := fmt.Sprintf(`bind %[1]s
port 26379
protected-mode no
dir /data
sentinel announce-ip %[1]s
sentinel monitor %[2]s %[3]s 6379 2
sentinel down-after-milliseconds %[2]s 2000
sentinel failover-timeout %[2]s 10000
sentinel parallel-syncs %[2]s 1
`, ip, RedisSentinelMaster, primaryIP)
		req := redisNodeRequest(conf, "sentinel.conf", "--sentinel", o)
		return startNode(ctx, redisNodeSpec(KindRedisSentinel), image, req, addr, "redis+sentinel://"+addr+"/0?master="+RedisSentinelMaster)
	})
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		Kind:      KindRedisSentinel,
		URL:       "redis+sentinel://" + strings.Join(redisSentinels, ",") + "/0?master=" + RedisSentinelMaster,
		Nodes:     brokers[:len(redisHAAddrs)],
		Sentinels: brokers[len(redisHAAddrs):],
	}
	if err := WaitRedisHA(ctx, c); err != nil {
		_ = c.Terminate(context.WithoutCancel(ctx))
		return nil, err
	}
	return c, nil
}

// redisBusAddrs returns the cluster bus addresses (port+10000) of addrs.
func redisBusAddrs(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(port)
		out[i] = net.JoinHostPort(host, strconv.Itoa(p+10000))
	}
	return out
}

func redisOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// redisNodeSpec is how a node of a replicated Redis is probed: it is up
// once it answers PING (not LOADING); WaitRedisHA judges the whole.
func redisNodeSpec(kind Kind) *spec {
	return &spec{kind: kind, ready: redisReady, startTimeout: 60 * time.Second, stopTimeout: 5 * time.Second}
}

// redisNodeRequest runs redis-server with the configuration conf, written
// to /data/NAME on the container's first start only: on a later start the
// file is the one the process itself rewrote (Sentinel, CONFIG REWRITE),
// so the node resumes its last role.
func redisNodeRequest(conf, name, extra string, o options) testcontainers.ContainerRequest {
	path := "/data/" + name
	script := fmt.Sprintf("set -e\nmkdir -p /data\n[ -f %[1]s ] || cat > %[1]s <<'EOF'\n%[2]sEOF\nexec redis-server %[1]s %[3]s\n", path, conf, extra)
	req := testcontainers.ContainerRequest{
		Cmd:                []string{"sh", "-c", script},
		HostConfigModifier: func(hc *container.HostConfig) { hc.NetworkMode = "host" },
	}
	for k, v := range o.env {
		if req.Env == nil {
			req.Env = map[string]string{}
		}
		req.Env[k] = v
	}
	return req
}

// redisStartNodes starts n nodes concurrently with start; if one fails, it
// terminates the others and returns the first error.
func redisStartNodes(ctx context.Context, n int, start func(i int) (*Broker, error)) ([]*Broker, error) {
	nodes := make([]*Broker, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = start(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, b := range nodes {
			if b != nil {
				_ = b.Terminate(context.WithoutCancel(ctx))
			}
		}
		return nil, err
	}
	return nodes, nil
}

// WaitRedisHA waits until a cluster from RedisClusterHA or RedisSentinelHA
// is whole, or ctx ends:
//
//   - Redis Cluster: every node says cluster_state:ok with all 16384 slots
//     assigned and none failing, knows the six nodes, and reports the same
//     slot owners as the others; there are three primaries, each with an
//     online replica, and every replica's link to its primary is up.
//   - Sentinel: the three sentinels name the same primary, see it as
//     healthy (no failover in progress), know each other and a replica;
//     the primary has an online replica, the other node replicates from
//     it with its link up.
//
// Tests call it after repairing a fault, before the next one.
func WaitRedisHA(ctx context.Context, c *Cluster) error {
	switch c.Kind {
	case KindRedisCluster:
		return waitFor(ctx, "redis cluster healthy", func(ctx context.Context) error { return redisClusterWhole(ctx, c) })
	case KindRedisSentinel:
		return waitFor(ctx, "redis sentinel set healthy", func(ctx context.Context) error { return redisSentinelWhole(ctx, c) })
	}
	return fmt.Errorf("testbed: WaitRedisHA: not a replicated Redis (kind %s)", c.Kind)
}

// redisNodeClient is a client of one node that neither retries nor waits
// long.
func redisNodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 2 * time.Second, ReadTimeout: 3 * time.Second,
		WriteTimeout: 3 * time.Second, MaxRetries: -1, DisableIdentity: true, PoolSize: 2})
}

// redisInfo parses an INFO or CLUSTER INFO reply into its fields.
func redisInfo(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// redisOnlineReplicas counts the replicas an INFO replication reply lists as
// online.
func redisOnlineReplicas(f map[string]string) int {
	n := 0
	for k, v := range f {
		if strings.HasPrefix(k, "slave") && strings.Contains(v, "state=online") {
			n++
		}
	}
	return n
}

func redisClusterWhole(ctx context.Context, c *Cluster) error {
	primaries, replicas := 0, 0
	var layout string
	for _, n := range c.Nodes {
		cl := redisNodeClient(n.Addr)
		info, err := cl.ClusterInfo(ctx).Result()
		var repl, slots string
		if err == nil {
			repl, err = cl.Info(ctx, "replication").Result()
		}
		if err == nil {
			slots, err = redisSlotLayout(ctx, cl)
		}
		_ = cl.Close()
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Addr, err)
		}
		ci := redisInfo(info)
		if ci["cluster_state"] != "ok" || ci["cluster_slots_assigned"] != "16384" || ci["cluster_slots_fail"] != "0" ||
			ci["cluster_slots_pfail"] != "0" || ci["cluster_known_nodes"] != strconv.Itoa(len(c.Nodes)) {
			return fmt.Errorf("node %s: cluster_state %s, slots assigned %s, pfail %s, fail %s, known nodes %s",
				n.Addr, ci["cluster_state"], ci["cluster_slots_assigned"], ci["cluster_slots_pfail"], ci["cluster_slots_fail"], ci["cluster_known_nodes"])
		}
		if layout == "" {
			layout = slots
		} else if slots != layout {
			return fmt.Errorf("node %s disagrees on the slot owners: %s, not %s", n.Addr, slots, layout)
		}
		ri := redisInfo(repl)
		switch ri["role"] {
		case "master":
			if redisOnlineReplicas(ri) < 1 {
				return fmt.Errorf("primary %s has no online replica", n.Addr)
			}
			primaries++
		case "slave":
			if ri["master_link_status"] != "up" {
				return fmt.Errorf("replica %s: link to its primary is %s", n.Addr, ri["master_link_status"])
			}
			replicas++
		}
	}
	if primaries != len(c.Nodes)/2 || replicas != len(c.Nodes)/2 {
		return fmt.Errorf("%d primaries and %d replicas, want %d of each", primaries, replicas, len(c.Nodes)/2)
	}
	return nil
}

// redisSlotLayout returns CLUSTER SHARDS as "START-END=PRIMARY ..."
// sorted.
func redisSlotLayout(ctx context.Context, cl *redis.Client) (string, error) {
	shards, err := cl.ClusterShards(ctx).Result()
	if err != nil {
		return "", err
	}
	var parts []string
	for _, sh := range shards {
		primary := "(none)"
		for _, n := range sh.Nodes {
			if n.Role == "master" {
				primary = net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
			}
		}
		for _, r := range sh.Slots {
			parts = append(parts, fmt.Sprintf("%d-%d=%s", r.Start, r.End, primary))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " "), nil
}

func redisSentinelWhole(ctx context.Context, c *Cluster) error {
	var primary string
	for _, s := range c.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, DialTimeout: 2 * time.Second, MaxRetries: -1, DisableIdentity: true, PoolSize: 2})
		addr, err := sc.GetMasterAddrByName(ctx, RedisSentinelMaster).Result()
		var m map[string]string
		var reps []map[string]string
		if err == nil {
			m, err = sc.Master(ctx, RedisSentinelMaster).Result()
		}
		if err == nil {
			reps, err = sc.Replicas(ctx, RedisSentinelMaster).Result()
		}
		_ = sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", s.Addr, err)
		}
		a := net.JoinHostPort(addr[0], addr[1])
		if primary == "" {
			primary = a
		} else if a != primary {
			return fmt.Errorf("sentinel %s names primary %s, another %s", s.Addr, a, primary)
		}
		if m["flags"] != "master" || m["num-other-sentinels"] != strconv.Itoa(len(c.Sentinels)-1) {
			return fmt.Errorf("sentinel %s: primary flags %q, %s other sentinels", s.Addr, m["flags"], m["num-other-sentinels"])
		}
		good := 0
		for _, r := range reps {
			if r["flags"] == "slave" && r["master-link-status"] == "ok" {
				good++
			}
		}
		if good < 1 {
			return fmt.Errorf("sentinel %s sees no healthy replica (%d listed)", s.Addr, len(reps))
		}
	}
	if c.Node(primary) == nil {
		return fmt.Errorf("sentinels name %s, not a node of the set", primary)
	}
	for _, n := range c.Nodes {
		cl := redisNodeClient(n.Addr)
		repl, err := cl.Info(ctx, "replication").Result()
		_ = cl.Close()
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Addr, err)
		}
		ri := redisInfo(repl)
		if n.Addr == primary {
			if ri["role"] != "master" || redisOnlineReplicas(ri) < 1 {
				return fmt.Errorf("primary %s: role %s, %d online replicas", n.Addr, ri["role"], redisOnlineReplicas(ri))
			}
			continue
		}
		if ri["role"] != "slave" || net.JoinHostPort(ri["master_host"], ri["master_port"]) != primary || ri["master_link_status"] != "up" {
			return fmt.Errorf("node %s: role %s of %s:%s, link %s; want a replica of %s", n.Addr, ri["role"], ri["master_host"], ri["master_port"], ri["master_link_status"], primary)
		}
	}
	return nil
}
