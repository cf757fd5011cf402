package kafka_test

import (
	"testing"

	"github.com/mqkit/mq/integration/testbed"
)

// TestMain lets the tests share one broker (testbed.SharedKafka) and stops
// it when they are done.
func TestMain(m *testing.M) { testbed.Main(m) }
