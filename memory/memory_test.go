package memory_test

import (
	"testing"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/memory"
	"github.com/mqkit/mq/mqtest"
)

func TestConformance(t *testing.T) {
	b := memory.NewBroker(memory.Config{})
	t.Cleanup(func() { _ = b.Close() })
	mqtest.Run(t, mqtest.Harness{
		Open: func(testing.TB) *mq.Client { return mq.NewClient(b.Conn()) },
	})
}
