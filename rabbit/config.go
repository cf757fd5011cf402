package rabbit

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/urlparams"
)

// QueueType is the kind of queue a consumer group gets.
type QueueType string

const (
	// Classic queues are RabbitMQ's original queue type: fast, on one node.
	// They keep no delivery count, so Attempt is 1, or 2 for any
	// redelivery (see the package documentation).
	Classic QueueType = "classic"
	// Quorum queues are replicated (Raft) and count deliveries, so Attempt
	// is exact across redeliveries by the broker.
	Quorum QueueType = "quorum"
)

// Defaults of Config's fields.
const (
	// DefaultMaxMessageSize is RabbitMQ 4's default max_message_size
	// (16 MiB). RabbitMQ 3.x allowed 128 MiB; raise MaxMessageSize for a
	// broker configured higher.
	DefaultMaxMessageSize = 16 << 20
	// DefaultConfirmWindow is how many publishes a channel keeps awaiting
	// confirmation before it waits for the oldest.
	DefaultConfirmWindow = 256
	// DefaultReconnectBackoff and DefaultMaxReconnectBackoff bound the
	// exponential wait between reconnection attempts.
	DefaultReconnectBackoff    = 100 * time.Millisecond
	DefaultMaxReconnectBackoff = 5 * time.Second
	// DefaultReconnectTimeout is how long Produce and Subscribe wait for
	// an unreachable broker.
	DefaultReconnectTimeout = 5 * time.Second
)

// Config configures a connection made with Dial. The zero value of every
// field but URL means its documented default. mq.Open("amqp://...") fills
// a Config from the URL with ParseURL.
type Config struct {
	// URL is the broker's address: amqp://user:pass@host:port/vhost (or
	// amqps://). For a cluster it may name several nodes, separated by
	// commas: amqp://user:pass@h1:5672,h2:5672,[::1]:5672/vhost, each one
	// dialed in turn with the same credentials, vhost and parameters until
	// one answers (see the package documentation, "Clusters"). It may
	// carry amqp091-go's own query parameters: heartbeat,
	// connection_timeout, channel_max, auth_mechanism, certfile, keyfile,
	// cacertfile, server_name_indication. String and errors show it with
	// the password replaced by "xxxxx".
	URL string

	// ExchangeType is the type of the exchange a topic becomes: "topic"
	// (default; every group binds with "#") or "fanout".
	ExchangeType string

	// QueueType is the type of the queues of consumer groups: Classic
	// (default) or Quorum. An existing queue keeps its type: declaring it
	// with another fails with a PRECONDITION_FAILED error.
	QueueType QueueType

	// DisableDeclare stops the connection from declaring exchanges, queues
	// and bindings, for brokers whose topology operators own. Producing to
	// a missing exchange, or subscribing to a missing queue, then fails
	// with a clear error.
	DisableDeclare bool

	// DisableUnroutedQueue stops declared topic exchanges from keeping the
	// messages produced while the topic has no consumer group. By default
	// each topic exchange gets an alternate exchange and queue, both named
	// "<topic>.unrouted", that keep them until a group subscribes (see
	// HoldUnrouted). With DisableUnroutedQueue such a message fails
	// Produce with ErrUnroutable. For an exchange that exists already
	// with other arguments, see the package documentation ("Sharing
	// exchanges with other clients").
	DisableUnroutedQueue bool

	// HoldUnrouted keeps the messages of "<topic>.unrouted" there instead
	// of handing them to the group that subscribes next (see the package
	// documentation, "Messages produced before any group"). They are then
	// delivered to no group: Lag counts them and a subscription logs
	// them once; operators move or drop them.
	HoldUnrouted bool

	// Shards, when above 1, keeps per-key order across several consumer
	// instances of a group: the group gets Shards queues fed by a
	// consistent-hash exchange (plugin rabbitmq_consistent_hash_exchange),
	// each with a single active consumer, and every member consumes all of
	// them. See the package documentation for the trade-off. Default 1.
	Shards int

	// DeadLetterExchange, when set, makes the broker dead-letter rejected
	// or expired messages of every group queue to this exchange (queue
	// argument x-dead-letter-exchange). Unless DisableDeclare is set, the
	// exchange is declared as a durable fanout exchange with a durable
	// queue of the same name bound to it, so dead letters are kept. Use
	// Conn.DeadLetter to reject failing messages to it.
	DeadLetterExchange string

	// DeliveryLimit sets x-delivery-limit on quorum queues: the broker
	// dead-letters (or drops, without DeadLetterExchange) a message
	// returned to the queue more than this many times. Zero leaves the
	// broker's default (none on RabbitMQ 3, 20 on RabbitMQ 4).
	DeliveryLimit int

	// MaxMessageSize is the largest message (see mq.Message.Size) Produce
	// sends; larger ones fail with mq.ErrMessageTooLarge before sending.
	// Set it to the broker's max_message_size. Default
	// DefaultMaxMessageSize.
	MaxMessageSize int

	// ConfirmWindow bounds the publishes one Produce keeps awaiting
	// confirmation. Default DefaultConfirmWindow.
	ConfirmWindow int

	// Prefetch is the consumer prefetch (basic.qos) per queue. Default:
	// the consumer's max in-flight (mq.WithMaxInFlight).
	Prefetch int

	// AckDelay is how long a consumer's acknowledgement may wait to be
	// sent in one basic.ack frame (with the multiple flag) together with
	// the channel's later ones: a frame and a socket write for a run of
	// messages handled in order, instead of one each. A quarter of the
	// prefetch window (at most 64 acknowledgements) is sent without
	// waiting longer. An acknowledgement still waiting when the channel
	// drops is lost like one on the wire: the broker delivers the message
	// again. Negative sends each at once (ack_delay=0 in the URL).
	// Default DefaultAckDelay.
	AckDelay time.Duration

	// ReconnectBackoff and MaxReconnectBackoff bound the exponential wait
	// between reconnection attempts (each wait is drawn between half and
	// all of its step, so that clients do not reconnect in lockstep).
	// Defaults DefaultReconnectBackoff and DefaultMaxReconnectBackoff.
	ReconnectBackoff    time.Duration
	MaxReconnectBackoff time.Duration

	// ReconnectTimeout bounds how long Produce (Send) and Subscribe keep
	// trying while the broker cannot be reached, counted from their first
	// failure, or from when dialing the broker started failing if that
	// was earlier: they then fail with an error wrapping
	// mq.ErrUnavailable (sooner if their context ends first). So while an
	// outage lasts longer, each call makes one attempt and fails at once.
	// It also bounds each attempt to connect (Dial and Lag make one).
	// Subscriptions already running are not bounded: they reconnect until
	// the broker is back. A broker that keeps a connection open but stops
	// answering (hung, partitioned) is noticed only when the connection's
	// heartbeat times out (heartbeat in the URL; amqp091's default is 10s):
	// until then a Produce waits for its confirms, bounded by its context.
	// Default DefaultReconnectTimeout.
	ReconnectTimeout time.Duration

	// Logger receives reconnection events. Default slog.Default().
	Logger *slog.Logger
}

// ParseURL parses an amqp:// or amqps:// URL with this package's query
// parameters into a Config:
//
//	exchange_type=topic|fanout   Config.ExchangeType
//	queue_type=classic|quorum    Config.QueueType
//	declare=true|false           false sets Config.DisableDeclare
//	unrouted=keep|hold|error     hold sets Config.HoldUnrouted, error Config.DisableUnroutedQueue
//	shards=N                     Config.Shards
//	dead_letter_exchange=NAME    Config.DeadLetterExchange
//	delivery_limit=N             Config.DeliveryLimit
//	max_message_size=N           Config.MaxMessageSize (bytes)
//	confirm_window=N             Config.ConfirmWindow
//	prefetch=N                   Config.Prefetch
//	ack_delay=DUR                Config.AckDelay (0: every ack at once)
//	reconnect_backoff=DUR        Config.ReconnectBackoff
//	max_reconnect_backoff=DUR    Config.MaxReconnectBackoff
//	reconnect_timeout=DUR        Config.ReconnectTimeout
//
// amqp091-go's parameters (heartbeat, connection_timeout, channel_max,
// auth_mechanism, certfile, keyfile, cacertfile, server_name_indication)
// stay in Config.URL. Any other parameter is an error wrapping
// mq.ErrInvalidURL. Errors never contain the password.
//
// The host may be a comma-separated list of the nodes of a cluster
// (host:port, or [IPv6]:port; the port defaults to 5672, or 5671 for
// amqps), e.g. amqp://user:pass@h1:5672,h2:5672,h3:5672/vhost. An empty
// entry in the list is an error.
func ParseURL(rawURL string) (Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		if lu := urlparams.ParseHostList(rawURL); lu != nil {
			return configFromURL(lu) // an IPv6 literal in a host list
		}
		return Config{}, fmt.Errorf("%w %q: %s", mq.ErrInvalidURL, mq.RedactURL(rawURL), mq.URLParseError(rawURL, err))
	}
	return configFromURL(u)
}

// amqpParams are the query parameters amqp091-go reads itself.
var amqpParams = []string{
	"heartbeat", "connection_timeout", "channel_max", "auth_mechanism",
	"certfile", "keyfile", "cacertfile", "server_name_indication",
}

func configFromURL(u *url.URL) (Config, error) {
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return Config{}, fmt.Errorf("%w %q: scheme must be amqp or amqps", mq.ErrInvalidURL, u.Redacted())
	}
	if u.Opaque != "" {
		return Config{}, fmt.Errorf("%w %q: want amqp://host:port/vhost", mq.ErrInvalidURL, u.Redacted())
	}
	if u.Fragment != "" {
		return Config{}, fmt.Errorf("%w %q: unexpected fragment", mq.ErrInvalidURL, u.Redacted())
	}
	var cfg Config
	q := urlparams.New(u.Query())
	q.Enum("exchange_type", &cfg.ExchangeType, "topic", "fanout")
	var qt string
	if q.Enum("queue_type", &qt, string(Classic), string(Quorum)) {
		cfg.QueueType = QueueType(qt)
	}
	declare := true
	q.Bool("declare", &declare)
	cfg.DisableDeclare = !declare
	var unrouted string
	q.Enum("unrouted", &unrouted, "keep", "hold", "error")
	cfg.HoldUnrouted = unrouted == "hold"
	cfg.DisableUnroutedQueue = unrouted == "error"
	q.Int("shards", &cfg.Shards, 1)
	q.NonEmpty("dead_letter_exchange", &cfg.DeadLetterExchange, "an exchange name")
	q.Int("delivery_limit", &cfg.DeliveryLimit, 1)
	q.Int("max_message_size", &cfg.MaxMessageSize, 1)
	q.Int("confirm_window", &cfg.ConfirmWindow, 1)
	q.Int("prefetch", &cfg.Prefetch, 1)
	q.Func("ack_delay", func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return errors.New("a duration such as 1ms, or 0 to send every acknowledgement at once")
		}
		cfg.AckDelay = d
		if d == 0 {
			cfg.AckDelay = -1
		}
		return nil
	})
	q.Duration("reconnect_backoff", &cfg.ReconnectBackoff, time.Millisecond)
	q.Duration("max_reconnect_backoff", &cfg.MaxReconnectBackoff, time.Millisecond)
	q.Duration("reconnect_timeout", &cfg.ReconnectTimeout, time.Millisecond)
	keep := q.Keep(amqpParams...)
	if err := q.Err(u.Scheme + "://"); err != nil {
		return Config{}, fmt.Errorf("%w %q: %w", mq.ErrInvalidURL, u.Redacted(), err)
	}
	au := *u
	au.RawQuery = keep.Encode()
	cfg.URL = au.String()
	if err := cfg.check(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// check validates cfg and its URL (each broker's, with amqp091's own
// parser).
func (cfg *Config) check() error {
	if cfg.URL == "" {
		return fmt.Errorf("%w: rabbit: Config.URL is empty", mq.ErrInvalidURL)
	}
	if _, err := cfg.endpoints(); err != nil {
		return err
	}
	switch {
	case cfg.ExchangeType != "" && cfg.ExchangeType != "topic" && cfg.ExchangeType != "fanout":
		return fmt.Errorf("%w: rabbit: ExchangeType %q: want topic or fanout", mq.ErrInvalidURL, cfg.ExchangeType)
	case cfg.QueueType != "" && cfg.QueueType != Classic && cfg.QueueType != Quorum:
		return fmt.Errorf("%w: rabbit: QueueType %q: want classic or quorum", mq.ErrInvalidURL, cfg.QueueType)
	case cfg.Shards < 0 || cfg.DeliveryLimit < 0 || cfg.MaxMessageSize < 0 || cfg.ConfirmWindow < 0 || cfg.Prefetch < 0:
		return fmt.Errorf("%w: rabbit: Shards, DeliveryLimit, MaxMessageSize, ConfirmWindow and Prefetch must not be negative", mq.ErrInvalidURL)
	case cfg.ReconnectBackoff < 0 || cfg.MaxReconnectBackoff < 0 || cfg.ReconnectTimeout < 0:
		return fmt.Errorf("%w: rabbit: reconnect backoffs and timeout must not be negative", mq.ErrInvalidURL)
	case cfg.HoldUnrouted && cfg.DisableUnroutedQueue:
		return fmt.Errorf("%w: rabbit: HoldUnrouted needs the unrouted queue that DisableUnroutedQueue turns off", mq.ErrInvalidURL)
	case cfg.DeliveryLimit > 0 && cfg.queueType() != Quorum:
		return fmt.Errorf("%w: rabbit: delivery_limit needs queue_type=quorum (classic queues keep no delivery count)", mq.ErrInvalidURL)
	}
	return nil
}

func (cfg *Config) withDefaults() Config {
	c := *cfg
	if c.ExchangeType == "" {
		c.ExchangeType = "topic"
	}
	if c.QueueType == "" {
		c.QueueType = Classic
	}
	if c.Shards == 0 {
		c.Shards = 1
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.ConfirmWindow == 0 {
		c.ConfirmWindow = DefaultConfirmWindow
	}
	if c.ReconnectBackoff == 0 {
		c.ReconnectBackoff = DefaultReconnectBackoff
	}
	if c.MaxReconnectBackoff == 0 {
		c.MaxReconnectBackoff = DefaultMaxReconnectBackoff
	}
	if c.MaxReconnectBackoff < c.ReconnectBackoff {
		c.MaxReconnectBackoff = c.ReconnectBackoff
	}
	if c.ReconnectTimeout == 0 {
		c.ReconnectTimeout = DefaultReconnectTimeout
	}
	if c.AckDelay == 0 {
		c.AckDelay = DefaultAckDelay
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (cfg *Config) queueType() QueueType {
	if cfg.QueueType == "" {
		return Classic
	}
	return cfg.QueueType
}

// redactedURL returns cfg.URL with the password replaced by "xxxxx".
func (cfg Config) redactedURL() string { return mq.RedactURL(cfg.URL) }

// String describes the configuration with the URL's password redacted.
func (cfg Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rabbit.Config{URL: %s", cfg.redactedURL())
	if cfg.ExchangeType != "" {
		fmt.Fprintf(&b, ", ExchangeType: %s", cfg.ExchangeType)
	}
	if cfg.QueueType != "" {
		fmt.Fprintf(&b, ", QueueType: %s", cfg.QueueType)
	}
	if cfg.DisableDeclare {
		b.WriteString(", DisableDeclare")
	}
	if cfg.DisableUnroutedQueue {
		b.WriteString(", DisableUnroutedQueue")
	}
	if cfg.HoldUnrouted {
		b.WriteString(", HoldUnrouted")
	}
	if cfg.Shards > 1 {
		fmt.Fprintf(&b, ", Shards: %d", cfg.Shards)
	}
	if cfg.DeadLetterExchange != "" {
		fmt.Fprintf(&b, ", DeadLetterExchange: %s", cfg.DeadLetterExchange)
	}
	b.WriteString("}")
	return b.String()
}

// GoString is String, so %#v does not print the password either.
func (cfg Config) GoString() string { return cfg.String() }

// LogValue makes slog log the configuration without the password.
func (cfg Config) LogValue() slog.Value { return slog.StringValue(cfg.String()) }
