package kafka_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestKafkaSASL authenticates with PLAIN and SCRAM-SHA-256/512 against a
// real broker's SASL listener, and checks that a wrong password is a clear
// error that never shows the password.
func TestKafkaSASL(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	b := testbed.Kafka(t, testbed.WithKafkaSASL(map[string]string{"alice": "alice-pw-1"}))

	// SCRAM credentials live in the cluster: create them through the admin
	// API on the plain listener.
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
		t.Fatalf("create SCRAM users: %v\n%s", err, b.Logs(context.Background()))
	}

	for _, tc := range []struct{ name, user, pass, mech string }{
		{"plain", "alice", "alice-pw-1", "plain"},
		{"scram-sha-256", "bob", "bob-pw-256", "scram-sha-256"},
		{"scram-sha-512", "carol", "carol-pw-512", "scram-sha-512"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			base := "kafka://" + tc.user + ":%s@" + b.SASLAddr + "/?create_topics=true&dial_timeout=5s&sasl=" + tc.mech
			c, err := mq.Open(ctx, strings.Replace(base, "%s", tc.pass, 1))
			if err != nil {
				t.Fatalf("open with %s: %v", tc.mech, err)
			}
			defer c.Close()
			topic := "sasl-" + mq.NewID()
			cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "secure-1", Body: []byte("over SASL")}); err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithCancel(ctx)
			var got string
			_ = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
				got = m.ID
				stop()
				return nil
			}))
			if got != "secure-1" {
				t.Fatalf("consumed %q over %s, want secure-1", got, tc.mech)
			}

			// The wrong password: a clear error, and no password in it.
			wrong := "Wr0ng-" + tc.pass
			_, err = mq.Open(ctx, strings.Replace(base, "%s", wrong, 1))
			if err == nil {
				t.Fatalf("open with a wrong %s password succeeded", tc.mech)
			}
			if !errors.Is(err, sarama.ErrSASLAuthenticationFailed) && !strings.Contains(strings.ToLower(err.Error()), "auth") {
				t.Errorf("wrong password error does not say authentication failed: %v", err)
			}
			if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), tc.pass) {
				t.Errorf("error shows the password: %v", err)
			}
			t.Logf("wrong password: %v", err)
		})
	}
}
