package kafka

import (
	"math/rand/v2"
	"sync/atomic"

	"github.com/IBM/sarama"
)

// murmur2 is Kafka's 32-bit murmur2 hash, as in the Java client's
// org.apache.kafka.common.utils.Utils.murmur2 (seed 0x9747b28c).
func murmur2(data []byte) int32 {
	const (
		seed = uint32(0x9747b28c)
		m    = uint32(0x5bd1e995)
		r    = 24
	)
	length := len(data)
	h := seed ^ uint32(length)
	n := length / 4
	for i := range n {
		j := i * 4
		k := uint32(data[j]) | uint32(data[j+1])<<8 | uint32(data[j+2])<<16 | uint32(data[j+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[n*4:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// JavaPartition returns the partition the Java client's default partitioner
// picks for a non-empty key: toPositive(murmur2(key)) % partitions.
func JavaPartition(key []byte, partitions int32) int32 {
	return (murmur2(key) & 0x7fffffff) % partitions
}

// javaPartitioner puts keyed messages where the Java client's default
// partitioner does, so Go and Java producers agree on a key's partition.
// Messages without a key go round-robin.
type javaPartitioner struct{ next atomic.Uint32 }

func newJavaPartitioner(string) sarama.Partitioner {
	p := &javaPartitioner{}
	p.next.Store(rand.Uint32())
	return p
}

func (p *javaPartitioner) Partition(msg *sarama.ProducerMessage, partitions int32) (int32, error) {
	if msg.Key == nil || msg.Key.Length() == 0 {
		return int32((p.next.Add(1) - 1) % uint32(partitions)), nil
	}
	key, err := msg.Key.Encode()
	if err != nil {
		return -1, err
	}
	return JavaPartition(key, partitions), nil
}

func (p *javaPartitioner) RequiresConsistency() bool { return true }

// partitioners maps the partitioner URL parameter to sarama constructors.
var partitioners = map[string]sarama.PartitionerConstructor{
	"murmur2":    newJavaPartitioner,                 // the Java client's default (the default here)
	"sarama":     sarama.NewHashPartitioner,          // sarama's default: FNV-1a
	"reference":  sarama.NewReferenceHashPartitioner, // FNV-1a, with the sign handled as Java does
	"roundrobin": sarama.NewRoundRobinPartitioner,    // ignores keys
	"random":     sarama.NewRandomPartitioner,        // ignores keys
}
