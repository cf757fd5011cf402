package integration_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
	"github.com/redis/go-redis/v9"
)

// TestCredentials: the right user and password work, a wrong password is
// a clear error, and no error ever shows the password: Kafka SASL PLAIN and
// SCRAM-SHA-256/512, a Redis ACL user, a RabbitMQ user.
func TestCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("kafka-sasl", func(t *testing.T) {
		b := testbed.Kafka(t, testbed.WithKafkaSASL(map[string]string{"alice": "alice-pw-1"}))
		// SCRAM credentials live in the cluster: create them through the
		// admin API on the plain listener.
		cfg := sarama.NewConfig()
		cfg.Version = sarama.V3_9_0_0
		admin, err := sarama.NewClusterAdmin([]string{b.Addr}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = admin.UpsertUserScramCredentials([]sarama.AlterUserScramCredentialsUpsert{
			{Name: "bob", Mechanism: sarama.SCRAM_MECHANISM_SHA_256, Iterations: 8192, Salt: []byte("salt-for-bob-0001"), Password: []byte("bob-pw-256")},
			{Name: "carol", Mechanism: sarama.SCRAM_MECHANISM_SHA_512, Iterations: 8192, Salt: []byte("salt-for-carol-01"), Password: []byte("carol-pw-512")},
		})
		_ = admin.Close()
		if err != nil {
			t.Fatalf("create SCRAM users: %v", err)
		}
		for _, tc := range []struct{ user, pass, mech string }{
			{"alice", "alice-pw-1", "plain"},
			{"bob", "bob-pw-256", "scram-sha-256"},
			{"carol", "carol-pw-512", "scram-sha-512"},
		} {
			t.Run(tc.mech, func(t *testing.T) {
				params := "/?create_topics=true&dial_timeout=5s&sasl=" + tc.mech
				roundTrip(ctx, t, "kafka://"+tc.user+":"+tc.pass+"@"+b.SASLAddr+params)
				checkRefused(ctx, t, "kafka://"+tc.user+":Wr0ng-"+tc.pass+"@"+b.SASLAddr+params, tc.pass, "SASL Authentication failed")
			})
		}
	})
	t.Run("redis-acl-user", func(t *testing.T) {
		b := targets[2].shared(t)
		admin := redis.NewClient(&redis.Options{Addr: b.Addr})
		defer admin.Close()
		const pw = "alice-Redis-pw-9"
		if err := admin.Do(ctx, "ACL", "SETUSER", "alice", "on", ">"+pw, "~*", "&*", "+@all").Err(); err != nil {
			t.Fatalf("ACL SETUSER: %v", err)
		}
		good := "redis://alice:" + pw + "@" + b.Addr + "/0"
		roundTrip(ctx, t, good)
		checkRefused(ctx, t, "redis://alice:Wr0ng-"+pw+"@"+b.Addr+"/0", pw, "WRONGPASS")
	})
	t.Run("rabbitmq-user", func(t *testing.T) {
		b := targets[1].shared(t)
		roundTrip(ctx, t, "amqp://guest:guest@"+b.Addr+"/")
		checkRefused(ctx, t, "amqp://guest:Wr0ng-guest-pw@"+b.Addr+"/", "Wr0ng-guest-pw", "username or password not allowed")
	})
}

func roundTrip(ctx context.Context, t *testing.T, rawURL string) {
	t.Helper()
	c, err := mq.Open(ctx, rawURL)
	if err != nil {
		t.Fatalf("open with the right credentials: %v", err)
	}
	defer c.Close()
	topic := "auth-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "authed"}); err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	var got string
	_ = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		got = m.ID
		stop()
		return nil
	}))
	if got != "authed" {
		t.Fatalf("consumed %q, want authed", got)
	}
}

func checkRefused(ctx context.Context, t *testing.T, rawURL, secret, want string) {
	t.Helper()
	c, err := mq.Open(ctx, rawURL)
	if err == nil {
		// Some clients connect lazily: the first operation must fail then.
		err = c.Producer().Produce(ctx, "auth-"+mq.NewID(), &mq.Message{})
		_ = c.Close()
	}
	if err == nil {
		t.Fatal("a wrong password was accepted")
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("wrong password error %q does not say %s", err, want)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error shows the password: %v", err)
	}
	t.Logf("wrong password: %v", err)
}

// TestTLS: kafka:// with tls_ca, amqps:// and rediss:// against real TLS listeners with
// certificates made by the test; a client trusting another CA gets a clear
// error.
func TestTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real brokers")
	}
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, certDir string) *testbed.Broker
		url   func(b *testbed.Broker, caFile string) string
	}{
		{
			"rabbitmq",
			func(t *testing.T, dir string) *testbed.Broker {
				return testbed.RabbitMQ(t, testbed.WithRabbitMQTLS(dir))
			},
			func(b *testbed.Broker, ca string) string {
				return "amqps://guest:guest@" + b.TLSAddr + "/?cacertfile=" + ca
			},
		},
		{
			"kafka",
			func(t *testing.T, dir string) *testbed.Broker { return testbed.Kafka(t, testbed.WithKafkaTLS(dir)) },
			func(b *testbed.Broker, ca string) string {
				return "kafka://" + b.TLSAddr + "/?create_topics=true&dial_timeout=5s&tls_ca=" + ca
			},
		},
		{
			"redis",
			func(t *testing.T, dir string) *testbed.Broker { return testbed.Redis(t, testbed.WithRedisTLS(dir)) },
			func(b *testbed.Broker, ca string) string { return "rediss://" + b.TLSAddr + "/0?tls_ca=" + ca },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certs := testbed.WriteCerts(t, "mq test CA")
			other := testbed.WriteCerts(t, "some other CA")
			b := tc.start(t, certs.Dir)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			roundTrip(ctx, t, tc.url(b, certs.CAFile))
			c, err := mq.Open(ctx, tc.url(b, other.CAFile))
			if err == nil {
				_ = c.Close()
				t.Fatal("a client trusting another CA connected")
			}
			if !strings.Contains(err.Error(), "certificate") {
				t.Errorf("wrong CA error does not mention the certificate: %v", err)
			}
			t.Logf("wrong CA: %v", err)
		})
	}
}
