package kafka

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/mqkit/mq"
)

// mockCluster is a one-broker in-process Kafka (sarama's MockBroker) that
// serves metadata for topic "t" (one partition) and accepts every produce.
func mockCluster(t *testing.T) *sarama.MockBroker {
	t.Helper()
	mb := sarama.NewMockBroker(t, 1)
	t.Cleanup(mb.Close)
	mb.SetHandlerByMap(map[string]sarama.MockResponse{
		"ApiVersionsRequest": sarama.NewMockApiVersionsResponse(t).SetApiKeys([]sarama.ApiVersionsResponseKey{
			{ApiKey: 0, MinVersion: 0, MaxVersion: 7},  // Produce
			{ApiKey: 3, MinVersion: 0, MaxVersion: 7},  // Metadata
			{ApiKey: 18, MinVersion: 0, MaxVersion: 3}, // ApiVersions
			{ApiKey: 22, MinVersion: 0, MaxVersion: 1}, // InitProducerId
		}),
		"MetadataRequest": sarama.NewMockMetadataResponse(t).
			SetBroker(mb.Addr(), mb.BrokerID()).
			SetController(mb.BrokerID()).
			SetLeader("t", 0, mb.BrokerID()),
		"InitProducerIDRequest": sarama.NewMockInitProducerIDResponse(t).SetProducerID(1),
		"ProduceRequest":        sarama.NewMockProduceResponse(t),
	})
	return mb
}

// TestSendRacingCloseNeverPanics produces from many goroutines while Close
// runs, many times over. Before the fix a hand-off to sarama's input
// channel could race its closing and panic with "send on closed channel".
// Every Send must succeed or fail with an error wrapping mq.ErrClosed.
func TestSendRacingCloseNeverPanics(t *testing.T) {
	mb := mockCluster(t)
	rounds := 40
	if testing.Short() {
		rounds = 5
	}
	var sent, closedErrs int
	for round := range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := NewConn(ctx, Config{Brokers: []string{mb.Addr()}})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		msg := func() []*mq.Message {
			ms := make([]*mq.Message, 20)
			for i := range ms {
				ms[i] = &mq.Message{ID: mq.NewID(), Key: "k", Body: []byte("x")}
			}
			return ms
		}
		if err := c.Send(ctx, "t", msg()); err != nil { // warm up: topic known, producer running
			t.Fatalf("round %d: first send: %v", round, err)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for {
					err := c.Send(ctx, "t", msg())
					mu.Lock()
					if err == nil {
						sent++
					} else {
						closedErrs++
					}
					mu.Unlock()
					if err != nil {
						if !errors.Is(err, mq.ErrClosed) {
							t.Errorf("round %d: Send racing Close = %v, want nil or an error wrapping mq.ErrClosed", round, err)
						}
						return
					}
				}
			}()
		}
		close(start)
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		if err := c.Close(); err != nil {
			t.Errorf("round %d: Close: %v", round, err)
		}
		wg.Wait()
		if err := c.Send(ctx, "t", msg()); !errors.Is(err, mq.ErrClosed) {
			t.Errorf("round %d: Send after Close = %v, want mq.ErrClosed", round, err)
		}
		cancel()
	}
	t.Logf("%d rounds: %d sends succeeded, %d refused with mq.ErrClosed", rounds, sent, closedErrs)
}

// TestCreateTopicOldVersionNeedsSizes checks that with a protocol version
// before 2.4, which cannot ask the broker for its default partitions and
// replication, CreateTopic says to set them instead of sending -1.
func TestCreateTopicOldVersionNeedsSizes(t *testing.T) {
	mb := mockCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := NewConn(ctx, Config{Brokers: []string{mb.Addr()}, Version: sarama.V2_3_0_0})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		partitions  int32
		replication int16
	}{{0, 1}, {3, 0}} {
		err := c.CreateTopic(ctx, "new", tc.partitions, tc.replication)
		if err == nil || !strings.Contains(err.Error(), "set partitions= and replication=") {
			t.Errorf("CreateTopic(%d, %d) with version 2.3 = %v, want an error saying to set both", tc.partitions, tc.replication, err)
		}
	}
}
