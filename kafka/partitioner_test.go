package kafka

import (
	"testing"

	"github.com/IBM/sarama"
)

// javaVectors were computed with Apache Kafka's own Java client 3.9.2:
// Utils.murmur2(key.getBytes(UTF_8)) and
// BuiltInPartitioner.partitionForKey(keyBytes, n) for n = 1, 2, 3, 6, 12, 100.
var javaVectors = []struct {
	key        string
	murmur2    int32
	partitions []int32
}{
	{"", 275646681, []int32{0, 1, 0, 3, 9, 81}},
	{"a", -1563381124, []int32{0, 0, 1, 4, 4, 24}},
	{"21", -973932308, []int32{0, 0, 0, 0, 0, 40}},
	{"foobar", -790332482, []int32{0, 0, 0, 0, 6, 66}},
	{"abc", 479470107, []int32{0, 1, 0, 3, 3, 7}},
	{"order-1", 1221710326, []int32{0, 0, 1, 4, 10, 26}},
	{"order-42", 501153024, []int32{0, 0, 0, 0, 0, 24}},
	{"customer-1234567", 1476870023, []int32{0, 1, 2, 5, 11, 23}},
	{"ключ", 2122343024, []int32{0, 0, 2, 2, 8, 24}},
	{"🔑-key", -785108901, []int32{0, 1, 2, 5, 11, 47}},
	{"a-little-bit-long-string", -985981536, []int32{0, 0, 2, 2, 8, 12}},
	{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, []int32{0, 1, 2, 5, 5, 77}},
	{"user:99", 1889644045, []int32{0, 1, 1, 1, 1, 45}},
	{"x", 2121525046, []int32{0, 0, 1, 4, 10, 46}},
	{"0", 971027396, []int32{0, 0, 2, 2, 8, 96}},
	{"1", -1993445489, []int32{0, 1, 0, 3, 3, 59}},
	{"2", 648968168, []int32{0, 0, 2, 2, 8, 68}},
	{"3", -1148165505, []int32{0, 1, 2, 5, 11, 43}},
	{"4", 1514888353, []int32{0, 1, 1, 1, 1, 53}},
	{"5", 55100550, []int32{0, 0, 0, 0, 6, 50}},
}

var vectorPartitionCounts = []int32{1, 2, 3, 6, 12, 100}

func TestMurmur2MatchesJava(t *testing.T) {
	for _, v := range javaVectors {
		if got := murmur2([]byte(v.key)); got != v.murmur2 {
			t.Errorf("murmur2(%q) = %d, Java says %d", v.key, got, v.murmur2)
		}
	}
}

func TestPartitionerMatchesJava(t *testing.T) {
	p := newJavaPartitioner("t")
	if !p.RequiresConsistency() {
		t.Error("a key partitioner must require consistency")
	}
	for _, v := range javaVectors {
		if v.key == "" {
			continue // Java hashes an empty byte array; mq treats "" as no key
		}
		for i, n := range vectorPartitionCounts {
			got, err := p.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(v.key)}, n)
			if err != nil {
				t.Fatal(err)
			}
			if got != v.partitions[i] {
				t.Errorf("key %q over %d partitions: partition %d, Java picks %d", v.key, n, got, v.partitions[i])
			}
		}
	}
}

func TestPartitionerSpreadsUnkeyed(t *testing.T) {
	p := newJavaPartitioner("t")
	seen := map[int32]int{}
	for range 30 {
		got, err := p.Partition(&sarama.ProducerMessage{}, 3)
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if len(seen) != 3 || seen[0] != 10 {
		t.Errorf("unkeyed messages over 3 partitions: %v, want round-robin", seen)
	}
}

func BenchmarkMurmur2(b *testing.B) {
	key := []byte("customer-1234567")
	for b.Loop() {
		murmur2(key)
	}
}
