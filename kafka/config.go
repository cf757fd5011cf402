package kafka

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/tlsfiles"
	"github.com/mqkit/mq/internal/urlparams"
	"github.com/xdg-go/scram"
)

// Config configures a Kafka connection. ParseURL fills one from a kafka://
// URL; NewConn takes one directly. The zero value of every field means its
// documented default.
type Config struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	Brokers []string

	// Logger receives the backend's log lines (rebalances, rejoins).
	// Default: the client's logger (mq.WithLogger), else slog.Default().
	Logger *slog.Logger

	// ClientID names this client to the brokers. Default "mqkit".
	ClientID string
	// Version is the Kafka protocol version sarama speaks. Default 2.8.0,
	// which every broker from 2.8 to 4.x accepts.
	Version sarama.KafkaVersion

	// CreateTopics creates a missing topic on first use with Partitions and
	// ReplicationFactor. Without it, producing to or consuming from a
	// missing topic fails with an error saying so.
	CreateTopics bool
	// Partitions of created topics. Default: the broker's num.partitions.
	Partitions int32
	// ReplicationFactor of created topics. Default: the broker's
	// default.replication.factor.
	//
	// Both defaults are applied by the broker, from Kafka 2.4 on; with an
	// older broker (or Version below 2.4) set both.
	ReplicationFactor int16
	// MinInsyncReplicas is the min.insync.replicas of created topics: how
	// many replicas, the leader included, must hold a message before an
	// acks=all write (every Produce) is acknowledged; with fewer in sync
	// the partition refuses writes rather than acknowledge what one more
	// lost node would take with it. Default: the broker's
	// min.insync.replicas (1 unless configured). On a cluster set it to
	// at least 2 with a replication factor of 3 (see "Clusters" in the
	// package documentation). It must not exceed ReplicationFactor, or
	// every write to the topic would be refused.
	MinInsyncReplicas int

	// MaxMessageBytes is the largest message the producer sends; Produce
	// rejects larger ones before sending. Created topics get it as their
	// max.message.bytes. Default 1000000 (the broker default is 1048588).
	MaxMessageBytes int
	// Compression of produced batches: none (default), gzip, snappy, lz4
	// or zstd.
	Compression sarama.CompressionCodec
	// Linger is how long the producer waits to fill a batch. Default 0:
	// send as soon as the previous request is answered (batches still form
	// under load).
	Linger time.Duration
	// BatchBytes sends a batch once it holds this many bytes. Default 0
	// (no threshold besides Linger).
	BatchBytes int
	// DisableIdempotence turns off sarama's idempotent producer, which is
	// on by default so that its internal retries never write a message
	// twice.
	DisableIdempotence bool
	// Partitioner picks a keyed message's partition: "murmur2" (default,
	// the Java client's), "sarama" (FNV-1a), "reference" (FNV-1a with the
	// sign handled as Java does), "roundrobin" or "random".
	Partitioner string

	// ReadUncommitted makes consumers read every record, also those of
	// transactions that were aborted or are still open. By default they
	// read committed records only (isolation.level=read_committed), as
	// Java consumers of transactional topics are configured to: records of
	// an aborted transaction are never handed to a handler, and a
	// partition's records after an open transaction wait until it ends.
	// Topics without transactional producers read the same either way.
	ReadUncommitted bool
	// StartNewest makes a group with no committed offset start at the end
	// of each partition. By default it starts at the oldest retained
	// message, so nothing produced after the group was created is missed.
	StartNewest bool
	// Balance is the partition assignment strategy: "range" (default),
	// "roundrobin" or "sticky".
	Balance string
	// DrainTimeout bounds how long a partition being revoked by a
	// rebalance waits for its in-flight handlers before its offsets are
	// committed and it is released. Default 15s. When it passes, the
	// handlers still running get their context cancelled, the partition's
	// messages not yet started are dropped, and all of them are delivered
	// again by the new owner (at least once). See "Rebalances" in the
	// package documentation.
	DrainTimeout time.Duration
	// SessionTimeout is the consumer group session timeout. Default 10s.
	SessionTimeout time.Duration
	// CommitInterval is how often a consumer commits the offsets of the
	// messages its handlers finished. Default 200ms. What finished since
	// the last commit is delivered again after a crash, or after the
	// broker dropped the group's session (an outage longer than
	// SessionTimeout): a shorter interval means fewer duplicates for one
	// small OffsetCommit request per interval. A revoked partition and a
	// stopping consumer always commit at once, whatever the interval.
	CommitInterval time.Duration
	// DialTimeout bounds connecting to a broker. Default 10s.
	DialTimeout time.Duration
	// RequestTimeout is how long a request may wait for the broker's
	// answer (and a write to its connection may block) before the
	// connection is given up as broken: what a hung broker (a paused
	// process, a partitioned machine) costs before the producer and
	// consumers retry on the partitions' new leaders. Default: 5s more
	// than the longest wait a healthy broker may take to answer: the
	// producer's acks timeout (10s), SessionTimeout, and DrainTimeout plus
	// a heartbeat interval (a JoinGroup waits for the slowest member to
	// hear of the rebalance and rejoin), rounded up to the second, so 24s
	// with the defaults. A shorter one makes slow but healthy answers count as
	// failures (the idempotent producer retries them without duplicates;
	// group joins fail and are retried).
	RequestTimeout time.Duration

	// TLS, when non-nil, makes connections use TLS.
	TLS *tls.Config
	// SASLMechanism is "" (none), "PLAIN", "SCRAM-SHA-256" or
	// "SCRAM-SHA-512".
	SASLMechanism string
	// User and Password for SASL.
	User, Password string

	// Sarama, when set, is called last with the sarama configuration, for
	// settings this package does not expose. Consumers use 5 s for
	// Consumer.MaxProcessingTime unless it sets another value than
	// sarama's default (100 ms).
	Sarama func(*sarama.Config)
}

// String describes the configuration without the password.
func (c Config) String() string {
	pw := ""
	if c.Password != "" {
		pw = ", password xxxxx"
	}
	return fmt.Sprintf("kafka brokers %v (client %q, sasl %q, user %q%s, tls %v)", c.Brokers, c.clientID(), c.SASLMechanism, c.User, pw, c.TLS != nil)
}

func (c Config) clientID() string {
	if c.ClientID == "" {
		return "mqkit"
	}
	return c.ClientID
}

// ParseURL reads a Config from a URL of the form
//
//	kafka://[user:password@]host1:9092[,host2:9092...]/?param=value&...
//
// Parameters (unknown ones are an error):
//
//	client_id=NAME            Config.ClientID
//	version=3.9.0             Config.Version
//	create_topics=true        Config.CreateTopics
//	partitions=N              Config.Partitions
//	replication=N             Config.ReplicationFactor
//	min_insync_replicas=N     Config.MinInsyncReplicas (min.insync.replicas
//	                          of created topics)
//	message_max_bytes=N       Config.MaxMessageBytes
//	compression=zstd          none, gzip, snappy, lz4, zstd
//	linger=5ms                Config.Linger
//	batch_bytes=N             Config.BatchBytes
//	idempotent=false          Config.DisableIdempotence
//	partitioner=murmur2       murmur2, sarama, reference, roundrobin, random
//	start=oldest              oldest or newest
//	isolation=read_committed  read_committed or read_uncommitted
//	                          (Config.ReadUncommitted)
//	balance=range             range, roundrobin, sticky
//	drain_timeout=15s         Config.DrainTimeout
//	session_timeout=10s       Config.SessionTimeout
//	commit_interval=200ms     Config.CommitInterval
//	dial_timeout=10s          Config.DialTimeout
//	request_timeout=30s       Config.RequestTimeout
//	tls=true                  use TLS (implied by any tls_* parameter)
//	tls_ca=FILE               PEM file of CAs to trust
//	tls_cert=FILE, tls_key=FILE  client certificate
//	tls_server_name=NAME      name to verify in the server certificate
//	tls_insecure=true         do not verify the server certificate
//	sasl=plain                plain, scram-sha-256, scram-sha-512 (user and
//	                          password from the URL)
//
// The portable parameters of mq.Open (group, concurrency, ...) are removed
// by mq.Open before the driver sees the URL.
func ParseURL(u *url.URL) (Config, error) {
	var c Config
	if u.Scheme != "kafka" {
		return c, fmt.Errorf("%w: scheme %q, want kafka", mq.ErrInvalidURL, u.Scheme)
	}
	for _, b := range strings.Split(u.Host, ",") {
		if b = strings.TrimSpace(b); b == "" {
			continue
		}
		if !strings.Contains(b, ":") {
			b += ":9092"
		}
		c.Brokers = append(c.Brokers, b)
	}
	if len(c.Brokers) == 0 {
		return c, fmt.Errorf("%w: kafka:// needs at least one broker, as kafka://host:9092", mq.ErrInvalidURL)
	}
	if u.Path != "" && u.Path != "/" {
		return c, fmt.Errorf("%w: kafka:// takes no path, got %q", mq.ErrInvalidURL, u.Path)
	}
	if u.User != nil {
		c.User = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	q := urlparams.New(u.Query())
	q.String("client_id", &c.ClientID)
	q.Func("version", func(v string) error {
		ver, err := sarama.ParseKafkaVersion(v)
		if err != nil {
			return errors.New("a Kafka version such as 3.9.0")
		}
		c.Version = ver
		return nil
	})
	q.Bool("create_topics", &c.CreateTopics)
	var partitions, replication int
	if q.Int("partitions", &partitions, 1) {
		if partitions > math.MaxInt32 {
			q.Bad("partitions", strconv.Itoa(partitions), "at most 2147483647")
		}
		c.Partitions = int32(min(partitions, math.MaxInt32))
	}
	if q.Int("replication", &replication, 1) {
		if replication > math.MaxInt16 {
			q.Bad("replication", strconv.Itoa(replication), "at most 32767")
		}
		c.ReplicationFactor = int16(min(replication, math.MaxInt16))
	}
	if q.Int("min_insync_replicas", &c.MinInsyncReplicas, 1) {
		if c.MinInsyncReplicas > math.MaxInt16 {
			q.Bad("min_insync_replicas", strconv.Itoa(c.MinInsyncReplicas), "at most 32767")
		} else if c.ReplicationFactor > 0 && c.MinInsyncReplicas > int(c.ReplicationFactor) {
			q.Bad("min_insync_replicas", strconv.Itoa(c.MinInsyncReplicas),
				fmt.Sprintf("at most replication=%d (more in-sync replicas than replicas refuses every write)", c.ReplicationFactor))
		}
	}
	q.Int("message_max_bytes", &c.MaxMessageBytes, 1)
	var compression string
	if q.Enum("compression", &compression, "none", "gzip", "snappy", "lz4", "zstd") {
		c.Compression = compressions[compression]
	}
	q.Duration("linger", &c.Linger, 0)
	q.Int("batch_bytes", &c.BatchBytes, 0)
	idempotent := true
	if q.Bool("idempotent", &idempotent) {
		c.DisableIdempotence = !idempotent
	}
	q.Enum("partitioner", &c.Partitioner, "murmur2", "sarama", "reference", "roundrobin", "random")
	var start string
	if q.Enum("start", &start, "oldest", "newest") {
		c.StartNewest = start == "newest"
	}
	var isolation string
	if q.Enum("isolation", &isolation, "read_committed", "read_uncommitted") {
		c.ReadUncommitted = isolation == "read_uncommitted"
	}
	q.Enum("balance", &c.Balance, "range", "roundrobin", "sticky")
	q.Duration("drain_timeout", &c.DrainTimeout, 0)
	q.Duration("session_timeout", &c.SessionTimeout, 0)
	q.Duration("commit_interval", &c.CommitInterval, time.Millisecond)
	q.Duration("dial_timeout", &c.DialTimeout, 0)
	q.Duration("request_timeout", &c.RequestTimeout, time.Second)

	var tlsOn, insecure bool
	var caFile, certFile, keyFile, serverName string
	q.Bool("tls", &tlsOn)
	// Any tls_* parameter turns TLS on.
	if q.String("tls_ca", &caFile) {
		tlsOn = true
	}
	if q.String("tls_cert", &certFile) {
		tlsOn = true
	}
	if q.String("tls_key", &keyFile) {
		tlsOn = true
	}
	if q.String("tls_server_name", &serverName) {
		tlsOn = true
	}
	if q.Bool("tls_insecure", &insecure) {
		tlsOn = true
	}
	q.Func("sasl", func(v string) error {
		mech, ok := saslMechanisms[strings.ToLower(v)]
		if !ok {
			return errors.New("plain, scram-sha-256 or scram-sha-512")
		}
		c.SASLMechanism = mech
		return nil
	})
	if c.SASLMechanism != "" && c.User == "" {
		q.Fail(errors.New("sasl needs a user and password in the URL (kafka://user:password@host:9092)"))
	}
	if c.SASLMechanism == "" && c.User != "" {
		q.Fail(errors.New("the URL has a user but no sasl=plain|scram-sha-256|scram-sha-512 to authenticate with"))
	}
	if (certFile == "") != (keyFile == "") {
		q.Fail(errors.New("tls_cert and tls_key go together"))
	}
	if err := q.Err("kafka://"); err != nil {
		return c, fmt.Errorf("%w: %w", mq.ErrInvalidURL, err)
	}
	if tlsOn {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: insecure}
		if err := tlsfiles.Load(tc, caFile, certFile, keyFile); err != nil {
			return c, fmt.Errorf("%w: %w", mq.ErrInvalidURL, err)
		}
		c.TLS = tc
	}
	return c, nil
}

var compressions = map[string]sarama.CompressionCodec{
	"none": sarama.CompressionNone, "gzip": sarama.CompressionGZIP, "snappy": sarama.CompressionSnappy,
	"lz4": sarama.CompressionLZ4, "zstd": sarama.CompressionZSTD,
}

var saslMechanisms = map[string]string{
	"plain":         sarama.SASLTypePlaintext,
	"scram-sha-256": sarama.SASLTypeSCRAMSHA256,
	"scram-sha-512": sarama.SASLTypeSCRAMSHA512,
}

var balancers = map[string]sarama.BalanceStrategy{
	"range":      sarama.NewBalanceStrategyRange(),
	"roundrobin": sarama.NewBalanceStrategyRoundRobin(),
	"sticky":     sarama.NewBalanceStrategySticky(),
}

func (c Config) drainTimeout() time.Duration {
	if c.DrainTimeout == 0 {
		return 15 * time.Second
	}
	return c.DrainTimeout
}

// topicConfig is the configuration of the topics this package creates:
// max.message.bytes when MaxMessageBytes is set (with room for the batch
// framing), min.insync.replicas when MinInsyncReplicas is; nil when
// neither is, so that the broker's defaults apply.
func (c Config) topicConfig() map[string]*string {
	var entries map[string]*string
	set := func(name string, v int) {
		if entries == nil {
			entries = map[string]*string{}
		}
		s := strconv.Itoa(v)
		entries[name] = &s
	}
	if c.MaxMessageBytes > 0 {
		set("max.message.bytes", c.MaxMessageBytes+1024)
	}
	if c.MinInsyncReplicas > 0 {
		set("min.insync.replicas", c.MinInsyncReplicas)
	}
	return entries
}

// producerTimeout is how long a broker may wait for the in-sync replicas
// before it answers a produce request (sarama's Producer.Timeout).
const producerTimeout = 10 * time.Second

func (c Config) sessionTimeout() time.Duration {
	if c.SessionTimeout == 0 {
		return 10 * time.Second
	}
	return c.SessionTimeout
}

func (c Config) requestTimeout() time.Duration {
	if c.RequestTimeout > 0 {
		return c.RequestTimeout
	}
	// A JoinGroup is answered once every member rejoined: up to a
	// heartbeat interval (a third of the session) for them to hear of the
	// rebalance, plus the drain of their partitions.
	d := max(producerTimeout, c.sessionTimeout(), c.drainTimeout()+c.sessionTimeout()/3) + 5*time.Second
	return (d + time.Second - 1).Truncate(time.Second) // whole seconds, rounded up
}

func (c Config) maxMessageBytes() int {
	if c.MaxMessageBytes == 0 {
		return 1000000
	}
	return c.MaxMessageBytes
}

// sarama builds the sarama configuration shared by producers, consumer
// groups and the admin client.
func (c Config) sarama() (*sarama.Config, error) {
	switch {
	case c.MinInsyncReplicas < 0 || c.MinInsyncReplicas > math.MaxInt16:
		return nil, fmt.Errorf("kafka: configuration: MinInsyncReplicas %d: want 0 (the broker's default) to 32767", c.MinInsyncReplicas)
	case c.ReplicationFactor > 0 && c.MinInsyncReplicas > int(c.ReplicationFactor):
		return nil, fmt.Errorf("kafka: configuration: MinInsyncReplicas %d is more than ReplicationFactor %d: every write to a created topic would be refused", c.MinInsyncReplicas, c.ReplicationFactor)
	}
	sc := sarama.NewConfig()
	sc.ClientID = c.clientID()
	sc.Version = sarama.V2_8_0_0
	if c.Version != (sarama.KafkaVersion{}) {
		sc.Version = c.Version
	}
	sc.Metadata.AllowAutoTopicCreation = false
	sc.Net.DialTimeout = 10 * time.Second
	if c.DialTimeout > 0 {
		sc.Net.DialTimeout = c.DialTimeout
	}
	// sarama's 30s read and write timeouts would keep a hung leader's
	// partitions stalled for 30s after the cluster elected new leaders.
	sc.Net.ReadTimeout = c.requestTimeout()
	sc.Net.WriteTimeout = c.requestTimeout()

	// Producer: durable and ordered. acks=all, idempotent so sarama's own
	// retries never duplicate, successes reported so Send can wait.
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.MaxMessageBytes = c.maxMessageBytes()
	sc.Producer.Compression = c.Compression
	sc.Producer.Flush.Frequency = c.Linger
	sc.Producer.Flush.Bytes = c.BatchBytes
	sc.Producer.Timeout = producerTimeout
	sc.Producer.Retry.Max = 10
	sc.Producer.Retry.Backoff = 200 * time.Millisecond
	if !c.DisableIdempotence {
		sc.Producer.Idempotent = true
		sc.Net.MaxOpenRequests = 1
	}
	part := c.Partitioner
	if part == "" {
		part = "murmur2"
	}
	sc.Producer.Partitioner = partitioners[part]

	// Consumer group: offsets are marked only after a handler finished, and
	// only up to the lowest unfinished message of each partition; sarama's
	// auto-commit then commits just those marks.
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	if c.StartNewest {
		sc.Consumer.Offsets.Initial = sarama.OffsetNewest
	}
	// Read committed by default; brokers before 0.11 have no transactions
	// and no isolation levels.
	sc.Consumer.IsolationLevel = sarama.ReadCommitted
	if c.ReadUncommitted || !sc.Version.IsAtLeast(sarama.V0_11_0_0) {
		sc.Consumer.IsolationLevel = sarama.ReadUncommitted
	}
	sc.Consumer.Offsets.AutoCommit.Enable = true
	sc.Consumer.Offsets.AutoCommit.Interval = 200 * time.Millisecond
	if c.CommitInterval > 0 {
		sc.Consumer.Offsets.AutoCommit.Interval = c.CommitInterval
	}
	sc.Consumer.Return.Errors = false
	if c.SessionTimeout > 0 {
		sc.Consumer.Group.Session.Timeout = c.SessionTimeout
		sc.Consumer.Group.Heartbeat.Interval = c.SessionTimeout / 3
	}
	bal := c.Balance
	if bal == "" {
		bal = "range"
	}
	sc.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{balancers[bal]}

	if c.TLS != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = c.TLS
	}
	if c.SASLMechanism != "" {
		sc.Net.SASL.Enable = true
		sc.Net.SASL.Handshake = true
		sc.Net.SASL.Mechanism = sarama.SASLMechanism(c.SASLMechanism)
		sc.Net.SASL.User = c.User
		sc.Net.SASL.Password = c.Password
		switch c.SASLMechanism {
		case sarama.SASLTypeSCRAMSHA256:
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{gen: scram.SHA256} }
		case sarama.SASLTypeSCRAMSHA512:
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{gen: scram.SHA512} }
		}
	}
	if c.Sarama != nil {
		c.Sarama(sc)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka: configuration: %w", err)
	}
	return sc, nil
}

// scramClient adapts xdg-go/scram to sarama.SCRAMClient.
type scramClient struct {
	gen  scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	c, err := s.gen.NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	s.conv = c.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) { return s.conv.Step(challenge) }

func (s *scramClient) Done() bool { return s.conv.Done() }
