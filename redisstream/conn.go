package redisstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/closeset"
)

// maxShards bounds Config.Shards.
const maxShards = 1024

// pipelineChunk bounds the XADDs sent in one pipeline.
const pipelineChunk = 1000

// ErrShardMismatch is returned by Send and Subscribe when the topic was set
// up with a different number of shards than the Conn's Config.Shards:
// producers and consumers of a topic must agree on it, or messages would go
// to streams nobody reads.
var ErrShardMismatch = errors.New("redisstream: shard count does not match the topic's")

// Config configures a Conn. The zero value is ready to use; URL parameters
// of the same names set the fields for mq.Open.
type Config struct {
	// ClaimIdle is how long an entry delivered to a consumer must go
	// without being acknowledged or kept alive before another member of
	// the group claims it (XAUTOCLAIM). Live consumers keep their
	// unsettled entries alive, so this is the time a crashed consumer's
	// entries wait. URL: claim_idle. Default 30s.
	ClaimIdle time.Duration

	// Block is how long one XREADGROUP waits for new entries. Cancelling
	// a Receive interrupts the wait at once (CLIENT UNBLOCK); Block only
	// bounds how often claims are checked while idle. URL: block.
	// Default 2s.
	Block time.Duration

	// MaxLen trims each stream to about this many entries on every XADD
	// (MAXLEN ~). Trimming deletes entries whether or not every group has
	// read or acknowledged them. URL: maxlen. Default 0: no trimming.
	MaxLen int64

	// MaxAge trims entries older than this on every XADD (MINID ~, by the
	// time in the entry ID). Same caveat as MaxLen; set at most one of the
	// two. URL: max_age. Default 0: no trimming.
	MaxAge time.Duration

	// Shards spreads each topic over this many streams by key hash, and
	// gives each stream to one member of a group at a time, so that a key
	// is handled by one consumer at a time across the group. Producers and
	// consumers of a topic must use the same value (checked: see
	// ErrShardMismatch). URL: shards. Default 0: one stream per topic,
	// named like the topic.
	Shards int

	// ShardLease is how long a member's claim on a shard lasts without
	// renewal (renewed every third of it). A crashed member's shards pass
	// to others after this. URL: shard_lease. Default 10s.
	ShardLease time.Duration

	// StartLatest makes a group created by Subscribe start with entries
	// added after it was created. By default a new group starts at the
	// beginning of the stream and gets every entry still retained.
	// URL: start=latest (default start=earliest).
	StartLatest bool

	// WaitReplicas, when above 0, makes Send and Schedule return nil only
	// once this many replicas acknowledged their writes: each pipeline of
	// XADDs (or MULTI/EXEC of a Schedule) is followed, on the same
	// connection, by WAIT WaitReplicas WaitTimeout. Fewer acknowledgements
	// within WaitTimeout fail the call with an error wrapping
	// ErrNotReplicated and mq.ErrUnavailable; the entries may have been
	// written all the same, so the caller retries with the same IDs and
	// consumers deduplicate. See "Clusters and replication" in the package
	// documentation for what this does and does not promise.
	// URL: wait_replicas. Default 0: return once the primary answered.
	WaitReplicas int

	// WaitTimeout bounds each WAIT of WaitReplicas. It must be at least
	// 250ms shorter than the client's read timeout (the WAIT reply is read
	// with it). URL: wait_timeout. Default 1s, or half the read timeout
	// if that is shorter.
	WaitTimeout time.Duration

	// MaxMessageBytes is the largest message (ID, key, header names and
	// values, body) Send accepts. Default 64 MiB (Redis itself takes up
	// to 512 MB in one field).
	MaxMessageBytes int

	// ConsumerPrefix starts each consumer name; a random suffix makes the
	// name unique per subscription. Default "HOSTNAME-PID".
	ConsumerPrefix string

	// Logger receives warnings about entries that cannot be delivered
	// (trimmed while pending) and background failures. Default
	// slog.Default().
	Logger *slog.Logger
}

func (cfg *Config) setDefaults() error {
	switch {
	case cfg.ClaimIdle < 0 || cfg.Block < 0 || cfg.MaxAge < 0 || cfg.ShardLease < 0:
		return fmt.Errorf("redisstream: durations in Config must not be negative")
	case cfg.MaxLen < 0 || cfg.MaxMessageBytes < 0:
		return fmt.Errorf("redisstream: MaxLen and MaxMessageBytes must not be negative")
	case cfg.Shards < 0 || cfg.Shards > maxShards:
		return fmt.Errorf("redisstream: Shards must be from 0 to %d, got %d", maxShards, cfg.Shards)
	case cfg.MaxLen > 0 && cfg.MaxAge > 0:
		return fmt.Errorf("redisstream: set at most one of MaxLen and MaxAge")
	case cfg.WaitReplicas < 0 || cfg.WaitTimeout < 0:
		return fmt.Errorf("redisstream: WaitReplicas and WaitTimeout must not be negative")
	}
	if cfg.ClaimIdle == 0 {
		cfg.ClaimIdle = defaultClaimIdle
	}
	if cfg.Block == 0 {
		cfg.Block = defaultBlock
	}
	if cfg.ShardLease == 0 {
		cfg.ShardLease = defaultShardLease
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = defaultMaxMessageLen
	}
	if cfg.ConsumerPrefix == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "host"
		}
		cfg.ConsumerPrefix = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return nil
}

// Conn is an mq.Conn over Redis Streams. Get it from an mq.Client opened
// with a redis:// URL (client.Conn().(*redisstream.Conn)), or make one
// around your own go-redis client with NewConn. Its methods may be called
// concurrently.
type Conn struct {
	client redis.UniversalClient
	cfg    Config
	owns   bool

	verified sync.Map // topic -> struct{}: shard layout checked

	subs closeset.Set[*subscription] // closed: the Conn is

	moversState // delayed delivery: a mover per topic subscribed (delay.go)
}

// NewConn returns a Conn that uses client, which may be a *redis.Client
// (one server or Sentinel failover) or a *redis.ClusterClient. Closing the
// Conn does not close client. Wrap the Conn with mq.NewClient.
func NewConn(client redis.UniversalClient, cfg Config) (*Conn, error) {
	if client == nil {
		return nil, errors.New("redisstream: NewConn needs a client")
	}
	return newConn(client, cfg, false)
}

func newConn(client redis.UniversalClient, cfg Config, owns bool) (*Conn, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := cfg.setWait(client); err != nil {
		return nil, err
	}
	return &Conn{client: client, cfg: cfg, owns: owns}, nil
}

// Client returns the go-redis client the Conn uses.
func (c *Conn) Client() redis.UniversalClient { return c.client }

// Config returns the Conn's configuration with defaults filled in.
func (c *Conn) Config() Config { return c.cfg }

// MaxMessageBytes implements mq.Sizer.
func (c *Conn) MaxMessageBytes() int { return c.cfg.MaxMessageBytes }

// StreamKeys returns the Redis keys of the streams that hold topic: the
// topic name itself, or with sharding "{topic}:0" to "{topic}:N-1" (one
// hash tag, so a Redis Cluster keeps them in one slot).
func (c *Conn) StreamKeys(topic string) []string {
	if c.cfg.Shards == 0 {
		return []string{topic}
	}
	keys := make([]string, c.cfg.Shards)
	for i := range keys {
		keys[i] = shardKey(topic, i)
	}
	return keys
}

func shardKey(topic string, i int) string { return "{" + topic + "}:" + strconv.Itoa(i) }

// shardCountKey holds a sharded topic's shard count.
func shardCountKey(topic string) string { return "{" + topic + "}:shards" }

// shardOf returns the shard of a message: by key, or by ID for messages
// without a key.
func shardOf(m *mq.Message, n int) int {
	h := fnv.New32a()
	if m.Key != "" {
		_, _ = h.Write([]byte(m.Key))
	} else {
		_, _ = h.Write([]byte(m.ID))
	}
	return int(h.Sum32() % uint32(n))
}

func (c *Conn) isClosed() bool { return c.subs.Closed() }

// checkTopic makes sure the topic's shard layout matches the Conn's, once
// per topic.
func (c *Conn) checkTopic(ctx context.Context, topic string) error {
	if _, ok := c.verified.Load(topic); ok {
		return nil
	}
	key := shardCountKey(topic)
	var got string
	if c.cfg.Shards > 0 {
		want := strconv.Itoa(c.cfg.Shards)
		ok, err := c.client.SetNX(ctx, key, want, 0).Result()
		if err != nil {
			return c.mapErr(err)
		}
		if ok {
			c.verified.Store(topic, struct{}{})
			return nil
		}
		got, err = c.client.Get(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return c.mapErr(err)
		}
		if got == want {
			c.verified.Store(topic, struct{}{})
			return nil
		}
	} else {
		var err error
		got, err = c.client.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			c.verified.Store(topic, struct{}{})
			return nil
		}
		if err != nil {
			return c.mapErr(err)
		}
	}
	return fmt.Errorf("%w: topic %q is sharded over %s streams (key %q), this connection uses shards=%d", ErrShardMismatch, topic, got, key, c.cfg.Shards)
}

// Send implements mq.Conn: one pipelined XADD per message, returning after
// every reply. With Config.WaitReplicas, each pipeline ends with a WAIT,
// and Send returns after it counted the replicas asked for.
func (c *Conn) Send(ctx context.Context, topic string, msgs []*mq.Message) error {
	if c.isClosed() {
		return mq.ErrClosed
	}
	for _, m := range msgs {
		if n := encodedSize(m); n > c.cfg.MaxMessageBytes {
			return fmt.Errorf("%w: message %s is %d bytes encoded, the limit is %d", mq.ErrMessageTooLarge, m.ID, n, c.cfg.MaxMessageBytes)
		}
	}
	if err := c.checkTopic(ctx, topic); err != nil {
		return err
	}
	var minID string
	if c.cfg.MaxAge > 0 {
		minID = strconv.FormatInt(time.Now().Add(-c.cfg.MaxAge).UnixMilli(), 10) + "-0"
	}
	for start := 0; start < len(msgs); start += pipelineChunk {
		chunk := msgs[start:min(start+pipelineChunk, len(msgs))]
		args := make([]*redis.XAddArgs, len(chunk))
		for i, m := range chunk {
			stream := topic
			if c.cfg.Shards > 0 {
				stream = shardKey(topic, shardOf(m, c.cfg.Shards))
			}
			a := &redis.XAddArgs{Stream: stream, ID: "*", Values: encode(m)}
			if c.cfg.MaxLen > 0 {
				a.MaxLen, a.Approx = c.cfg.MaxLen, true
			} else if minID != "" {
				a.MinID, a.Approx = minID, true
			}
			args[i] = a
		}
		var err error
		if c.cfg.WaitReplicas > 0 {
			err = c.addReplicated(ctx, chunk, args)
		} else {
			err = c.add(ctx, chunk, args)
		}
		if err != nil {
			return fmt.Errorf("redisstream: XADD to %q failed (%d messages sent before this batch): %w", topic, start, err)
		}
	}
	return nil
}

// add sends one XADD per message in one pipeline (through the Cluster
// client, which follows redirections itself) and returns the first
// errors, up to three.
func (c *Conn) add(ctx context.Context, chunk []*mq.Message, args []*redis.XAddArgs) error {
	pipe := c.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(args))
	for i, a := range args {
		cmds[i] = pipe.XAdd(ctx, a)
	}
	_, _ = pipe.Exec(ctx)
	var errs []error
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			errs = append(errs, fmt.Errorf("message %s: %w", chunk[i].ID, c.mapErr(err)))
			if len(errs) == 3 {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// Close implements mq.Conn: it closes the Conn's subscriptions (handing
// their unsettled entries back to the group) and, if the Conn made its
// client from a URL, the client. Close is idempotent.
func (c *Conn) Close() error {
	first, err := c.subs.CloseAll()
	if !first {
		return nil
	}
	if c.owns {
		err = errors.Join(err, c.client.Close())
	}
	return err
}

func (c *Conn) forget(s *subscription) { c.subs.Remove(s) }

// consumerName returns a new consumer name, unique per subscription.
func (c *Conn) consumerName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return c.cfg.ConsumerPrefix + "-" + hex.EncodeToString(b[:])
}

var (
	_ mq.Conn  = (*Conn)(nil)
	_ mq.Sizer = (*Conn)(nil)
)
