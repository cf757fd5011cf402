package kafka

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

func TestParseURL(t *testing.T) {
	u, err := url.Parse("kafka://alice:s3cret@k1,k2:9093/?create_topics=true&partitions=6&replication=3&compression=zstd&linger=5ms&start=newest&balance=sticky&sasl=scram-sha-512&idempotent=false&partitioner=sarama&message_max_bytes=2000000&drain_timeout=3s&version=3.9.0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Brokers: []string{"k1:9092", "k2:9093"}, CreateTopics: true, Partitions: 6, ReplicationFactor: 3,
		Compression: sarama.CompressionZSTD, Linger: 5 * time.Millisecond, StartNewest: true, Balance: "sticky",
		SASLMechanism: sarama.SASLTypeSCRAMSHA512, User: "alice", Password: "s3cret", DisableIdempotence: true,
		Partitioner: "sarama", MaxMessageBytes: 2000000, DrainTimeout: 3 * time.Second, Version: sarama.V3_9_0_0,
	}
	if c.String() != want.String() || c.Partitions != 6 || c.ReplicationFactor != 3 || c.Compression != want.Compression ||
		c.Linger != want.Linger || !c.StartNewest || c.Balance != "sticky" || !c.DisableIdempotence ||
		c.Partitioner != "sarama" || c.MaxMessageBytes != 2000000 || c.DrainTimeout != want.DrainTimeout || c.Version != want.Version ||
		strings.Join(c.Brokers, ",") != "k1:9092,k2:9093" {
		t.Errorf("ParseURL = %+v\nwant %+v", c, want)
	}
	if strings.Contains(c.String(), "s3cret") {
		t.Errorf("Config.String leaks the password: %s", c)
	}
	sc, err := c.sarama()
	if err != nil {
		t.Fatal(err)
	}
	if sc.Producer.RequiredAcks != sarama.WaitForAll || sc.Consumer.Offsets.Initial != sarama.OffsetNewest || sc.Net.SASL.SCRAMClientGeneratorFunc == nil {
		t.Errorf("sarama config not derived: acks %v initial %v", sc.Producer.RequiredAcks, sc.Consumer.Offsets.Initial)
	}
}

func TestParseURLDefaults(t *testing.T) {
	u, _ := url.Parse("kafka://localhost")
	c, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.sarama()
	if err != nil {
		t.Fatal(err)
	}
	if !sc.Producer.Idempotent || sc.Producer.RequiredAcks != sarama.WaitForAll || sc.Consumer.Offsets.Initial != sarama.OffsetOldest || sc.Metadata.AllowAutoTopicCreation {
		t.Errorf("defaults: idempotent %v acks %v initial %v autocreate %v", sc.Producer.Idempotent, sc.Producer.RequiredAcks, sc.Consumer.Offsets.Initial, sc.Metadata.AllowAutoTopicCreation)
	}
	if c.Brokers[0] != "localhost:9092" {
		t.Errorf("default port not added: %v", c.Brokers)
	}
	if got := sc.Consumer.Offsets.AutoCommit.Interval; got != 200*time.Millisecond {
		t.Errorf("default commit interval %v, want 200ms", got)
	}
}

// TestCommitInterval: commit_interval sets how often finished offsets are
// committed; below 1ms it is refused.
func TestCommitInterval(t *testing.T) {
	u, _ := url.Parse("kafka://localhost/?commit_interval=50ms")
	c, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.sarama()
	if err != nil {
		t.Fatal(err)
	}
	if sc.Consumer.Offsets.AutoCommit.Interval != 50*time.Millisecond {
		t.Errorf("commit_interval=50ms gave %v", sc.Consumer.Offsets.AutoCommit.Interval)
	}
	u, _ = url.Parse("kafka://localhost/?commit_interval=0s")
	if _, err := ParseURL(u); !errors.Is(err, mq.ErrInvalidURL) {
		t.Errorf("commit_interval=0s: %v, want mq.ErrInvalidURL", err)
	}
}

func TestParseURLErrors(t *testing.T) {
	for _, raw := range []string{
		"kafka:///",
		"kafka://h:9092/path",
		"kafka://h:9092/?bogus=1",
		"kafka://h:9092/?partitions=0",
		"kafka://h:9092/?compression=brotli",
		"kafka://h:9092/?start=middle",
		"kafka://h:9092/?linger=soon",
		"kafka://h:9092/?sasl=plain",
		"kafka://bob:s3cret@h:9092/",
		"kafka://bob:s3cret@h:9092/?sasl=kerberos",
		"kafka://h:9092/?tls_cert=/x",
		"kafka://h:9092/?version=banana",
		"kafka://h:9092/?partitioner=crc",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		_, err = ParseURL(u)
		if !errors.Is(err, mq.ErrInvalidURL) {
			t.Errorf("ParseURL(%q) = %v, want ErrInvalidURL", raw, err)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseURL(%q) leaks the password: %v", raw, err)
		}
	}
}

func TestToMessage(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	m := toMessage(&sarama.ConsumerMessage{
		Topic: "t", Partition: 2, Offset: 41, Key: []byte("k\xff"), Value: []byte{0, 1},
		Timestamp: ts,
		Headers:   []*sarama.RecordHeader{{Key: []byte(HeaderID), Value: []byte("id-1")}, nil, {Key: []byte("h"), Value: []byte("v")}},
	})
	if m.ID != "id-1" || m.Key != "k\xff" || string(m.Body) != "\x00\x01" || m.Headers["h"] != "v" || len(m.Headers) != 1 || m.Attempt != 1 || !m.Timestamp.Equal(ts) {
		t.Errorf("toMessage = %+v", m)
	}
	foreign := toMessage(&sarama.ConsumerMessage{Topic: "t", Partition: 2, Offset: 41, Value: []byte("x")})
	if foreign.ID != "t/2/41" || foreign.Headers != nil || foreign.Timestamp.IsZero() {
		t.Errorf("record without mq-id: %+v", foreign)
	}
}

func FuzzToMessage(f *testing.F) {
	f.Add([]byte("key"), []byte("body"), []byte("mq-id"), []byte("id"))
	f.Add([]byte{}, []byte{}, []byte{0xff}, []byte{})
	f.Fuzz(func(t *testing.T, key, body, hk, hv []byte) {
		m := toMessage(&sarama.ConsumerMessage{Topic: "t", Key: key, Value: body, Headers: []*sarama.RecordHeader{{Key: hk, Value: hv}}})
		if m.ID == "" {
			t.Fatal("empty ID")
		}
		if m.Key != string(key) || string(m.Body) != string(body) {
			t.Fatal("key or body changed")
		}
	})
}

// TestParseURLReportsEveryProblem checks that ParseURL names every bad
// parameter at once, and lists the known ones for an unknown name.
func TestParseURLReportsEveryProblem(t *testing.T) {
	u, _ := url.Parse("kafka://h/?partitions=0&linger=soon&bogus=1&tls_ca=/no/such/file")
	_, err := ParseURL(u)
	if !errors.Is(err, mq.ErrInvalidURL) {
		t.Fatalf("ParseURL = %v, want ErrInvalidURL", err)
	}
	for _, want := range []string{`partitions="0"`, `linger="soon"`, `unknown kafka:// parameter "bogus"`, "isolation"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURL error %q does not say %q", err, want)
		}
	}
	u, _ = url.Parse("kafka://h/?tls_ca=/no/such/file")
	if _, err := ParseURL(u); !errors.Is(err, mq.ErrInvalidURL) || !strings.Contains(err.Error(), "tls_ca") {
		t.Errorf("missing tls_ca file: %v, want ErrInvalidURL naming tls_ca", err)
	}
}
