// Command benchcmp runs the mq bench workload on Redis Streams, Kafka and
// RabbitMQ through the mqkit SDK and through Watermill
// (watermill-redisstream, watermill-kafka, watermill-amqp) in one run,
// and prints the medians and the SDK/Watermill ratios. With -suite it runs
// a preset of workloads (issue16: consume at concurrency 1, 16 and 32,
// produce 16×1 and 4×100) through the SDK, the bare driver and Watermill,
// rows and systems alternating in rounds, and prints SDK/bare and
// SDK/Watermill side by side with CPU per message. It is a module of its
// own so that Watermill never enters the SDK's go.mod.
//
//	source ../.testbed.env   # images for the testbed
//	go run . -runs 3
//	go run . -suite issue16 -n 300000 -runs 3
//	go run . outbox          # package outbox's relay vs Watermill's Forwarder
//
// Watermill is used the way its documentation shows: a Publisher whose
// Publish returns after the broker accepted each message (sarama
// SyncProducer with acks=all and idempotence here, the XADD reply on
// Redis), and a Subscriber whose channel yields one message at a time,
// acknowledged after the handler. The SDK runs with the same workload
// (batches, producers, handler concurrency).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq/integration/testbed"
	"github.com/mqkit/mq/internal/bench"
	"github.com/mqkit/mq/kafka"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "outbox" {
		return runOutbox(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("benchcmp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "redis,kafka,rabbitmq", "comma-separated: redis, kafka, rabbitmq")
	redisURL := fs.String("redis-url", "", "use this Redis instead of starting one")
	kafkaURL := fs.String("kafka-url", "", "use this Kafka instead of starting one")
	amqpURL := fs.String("amqp-url", "", "use this RabbitMQ instead of starting one")
	suite := fs.String("suite", "", "run this preset of workloads through the SDK, the bare driver and Watermill: "+strings.Join(bench.Suites(), ", "))
	runs := fs.Int("runs", 3, "runs of each system (medians are reported)")
	n := fs.Int("n", 20000, "messages per phase")
	conc := fs.Int("concurrency", 32, "SDK handler concurrency (Watermill handles one message at a time per subscriber)")
	sleep := fs.Duration("handler-sleep", 0, "time the handler sleeps per message")
	modeName := fs.String("mode", "consume", "produce, consume, mixed or all")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mode, err := bench.ParseMode(*modeName)
	if err != nil {
		return err
	}
	w := bench.Workload{Messages: *n, Concurrency: *conc, HandlerSleep: *sleep, Timeout: 5 * time.Minute}
	if !*quiet {
		w.Progress = stderr
	}
	fmt.Fprintf(stdout, "# benchcmp %s: GOMAXPROCS %d, %s, %d runs per system, medians\n\n", time.Now().UTC().Format(time.RFC3339), runtime.GOMAXPROCS(0), runtime.Version(), *runs)
	for _, name := range strings.Split(*brokers, ",") {
		var kind testbed.Kind
		u := ""
		switch strings.TrimSpace(name) {
		case "redis":
			kind, u = testbed.KindRedis, *redisURL
		case "kafka":
			kind, u = testbed.KindKafka, *kafkaURL
		case "rabbitmq":
			kind, u = testbed.KindRabbitMQ, *amqpURL
		default:
			return fmt.Errorf("unknown broker %q (want redis, kafka or rabbitmq)", name)
		}
		if u == "" {
			fmt.Fprintf(stderr, "starting %s...\n", kind)
			b, err := testbed.Start(ctx, kind)
			if err != nil {
				return fmt.Errorf("start %s: %w", kind, err)
			}
			u = b.URL
			defer func() {
				tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				defer cancel()
				_ = b.Terminate(tctx)
			}()
		}
		var wm bench.System
		switch kind {
		case testbed.KindRedis:
			wm, err = newWatermillRedis(u)
		case testbed.KindKafka:
			wm, err = newWatermillKafka(u)
		default:
			wm, err = newWatermillAMQP(u)
		}
		if err != nil {
			return err
		}
		systems := []bench.System{bench.SDK{URL: u}, wm}
		if *suite != "" {
			bare, err := bench.Bare(u)
			if err != nil {
				return err
			}
			systems = []bench.System{bench.SDK{URL: u}, bare, wm}
		}
		// A fresh broker (above all Kafka's JVM) is slower for its first
		// seconds: warm it up through every system before measuring.
		for _, s := range systems {
			if _, err := bench.Run(ctx, s, bench.Workload{Messages: max(*n/5, 1000)}, bench.ModeConsume); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
		if *suite != "" {
			if err := runSuite(ctx, stdout, kind, systems, *suite, w, *runs); err != nil {
				return err
			}
			continue
		}
		var all []bench.Result
		for range *runs {
			for _, s := range systems {
				rs, err := bench.Run(ctx, s, w, mode)
				if err != nil {
					return err
				}
				all = append(all, rs...)
			}
		}
		sum := bench.Summarize(all)
		fmt.Fprintf(stdout, "## %s: %d × 1 KiB, 4 producers × batch 100, SDK concurrency %d, 1000 keys, handler sleep %v\n\n", kind, *n, *conc, *sleep)
		if err := bench.WriteTable(stdout, sum); err != nil {
			return err
		}
		fmt.Fprintln(stdout)
		if err := bench.WriteRatios(stdout, all, "sdk"); err != nil {
			return err
		}
		fmt.Fprintln(stdout)
	}
	return nil
}

// runSuite runs the rows of a suite through systems (SDK, bare,
// Watermill) and prints the medians and both comparisons.
func runSuite(ctx context.Context, stdout io.Writer, kind testbed.Kind, systems []bench.System, suite string, w bench.Workload, runs int) error {
	rows, err := bench.Suite(suite, w)
	if err != nil {
		return err
	}
	all, err := bench.RunSuite(ctx, systems, rows, runs)
	if err != nil {
		return err
	}
	sum := bench.Summarize(all)
	fmt.Fprintf(stdout, "## %s: suite %s (%d × 1 KiB per row, 1000 keys, no-op handler; rows and systems alternate in rounds)\n\n", kind, suite, w.Messages)
	if err := bench.WriteTable(stdout, sum); err != nil {
		return err
	}
	for _, other := range []string{systems[1].Name(), systems[2].Name()} {
		fmt.Fprintln(stdout)
		if err := bench.WriteComparison(stdout, all, systems[0].Name(), other); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout)
	return nil
}

// keyMeta is the metadata entry that carries a message's key.
const keyMeta = "key"

// newMessage makes the Watermill message of m. Publish returns only after
// the broker accepted the message, so the body may be reused afterwards.
func newMessage(m bench.Message) *message.Message {
	wm := message.NewMessage(watermill.NewUUID(), m.Body)
	if m.Key != "" {
		wm.Metadata.Set(keyMeta, m.Key)
	}
	return wm
}

// wmSession is a Watermill publisher and a subscriber factory on one topic.
type wmSession struct {
	pub    message.Publisher
	newSub func() (message.Subscriber, error)
	topic  string
	close  func() error
}

func (s *wmSession) Produce(_ context.Context, msgs []bench.Message) error {
	wms := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		wms[i] = newMessage(m)
	}
	return s.pub.Publish(s.topic, wms...)
}

// Consume handles one message at a time and acknowledges it, as a
// Watermill handler does.
func (s *wmSession) Consume(ctx context.Context, h bench.Handler) error {
	sub, err := s.newSub()
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := sub.Subscribe(sctx, s.topic)
	if err != nil {
		_ = sub.Close()
		return err
	}
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				_ = sub.Close()
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("watermill subscription closed")
			}
			h(m.Metadata.Get(keyMeta), m.Payload)
			m.Ack()
		case <-ctx.Done():
			cancel()
			return sub.Close()
		}
	}
}

func (s *wmSession) Close() error {
	return errors.Join(s.pub.Close(), s.close())
}

// watermillRedis runs the workload through watermill-redisstream.
type watermillRedis struct{ opts *redis.Options }

func newWatermillRedis(rawURL string) (bench.System, error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return watermillRedis{opts: opts}, nil
}

func (watermillRedis) Name() string { return "watermill" }

func (w watermillRedis) Open(ctx context.Context, s bench.Setup) (bench.Session, error) {
	client := redis.NewClient(w.opts)
	// The group from the stream's start, as the Subscriber would create
	// it (OldestId "0"), before anything is produced.
	if err := client.XGroupCreateMkStream(ctx, s.Topic, s.Group, "0").Err(); err != nil {
		_ = client.Close()
		return nil, err
	}
	pub, err := wredis.NewPublisher(wredis.PublisherConfig{Client: client}, watermill.NopLogger{})
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	return &wmSession{
		pub:   pub,
		topic: s.Topic,
		newSub: func() (message.Subscriber, error) {
			return wredis.NewSubscriber(wredis.SubscriberConfig{Client: client, ConsumerGroup: s.Group}, watermill.NopLogger{})
		},
		close: client.Close,
	}, nil
}

// watermillKafka runs the workload through watermill-kafka.
type watermillKafka struct{ brokers []string }

func newWatermillKafka(rawURL string) (bench.System, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	cfg, err := kafka.ParseURL(u)
	if err != nil {
		return nil, err
	}
	return watermillKafka{brokers: cfg.Brokers}, nil
}

func (watermillKafka) Name() string { return "watermill" }

func (w watermillKafka) Open(ctx context.Context, s bench.Setup) (bench.Session, error) {
	// The topic the SDK creates with create_topics=true: one partition,
	// the broker's replication factor.
	ac := sarama.NewConfig()
	ac.Version = sarama.V2_8_0_0
	admin, err := sarama.NewClusterAdmin(w.brokers, ac)
	if err != nil {
		return nil, err
	}
	err = admin.CreateTopic(s.Topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: -1}, false)
	_ = admin.Close()
	if err != nil {
		return nil, err
	}

	pc := wkafka.DefaultSaramaSyncPublisherConfig()
	pc.Version = sarama.V2_8_0_0
	pc.Producer.RequiredAcks = sarama.WaitForAll
	pc.Producer.Idempotent = true
	pc.Net.MaxOpenRequests = 1
	marshaler := wkafka.NewWithPartitioningMarshaler(func(_ string, m *message.Message) (string, error) {
		return m.Metadata.Get(keyMeta), nil
	})
	pub, err := wkafka.NewPublisher(wkafka.PublisherConfig{Brokers: w.brokers, Marshaler: marshaler, OverwriteSaramaConfig: pc}, watermill.NopLogger{})
	if err != nil {
		return nil, err
	}
	return &wmSession{
		pub:   pub,
		topic: s.Topic,
		newSub: func() (message.Subscriber, error) {
			sc := wkafka.DefaultSaramaSubscriberConfig()
			sc.Version = sarama.V2_8_0_0
			sc.Consumer.Offsets.Initial = sarama.OffsetOldest
			return wkafka.NewSubscriber(wkafka.SubscriberConfig{
				Brokers: w.brokers, Unmarshaler: marshaler, OverwriteSaramaConfig: sc, ConsumerGroup: s.Group,
			}, watermill.NopLogger{})
		},
		close: func() error { return nil },
	}, nil
}
