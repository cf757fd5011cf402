package redisstream

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// values turns encode's pairs into what go-redis returns for an entry.
func values(pairs []any) map[string]any {
	m := map[string]any{}
	for i := 0; i < len(pairs); i += 2 {
		v := pairs[i+1]
		if b, ok := v.([]byte); ok {
			v = string(b)
		}
		m[pairs[i].(string)] = v
	}
	return m
}

func TestEncodeDecode(t *testing.T) {
	tests := []*mq.Message{
		{ID: "a", Key: "k", Body: []byte("hello"), Headers: map[string]string{"x": "1", "body": "not the body", "": "empty name", "h:y": "prefixed"}},
		{ID: "b", Body: []byte{0, 0xff, 0xfe}},
		{ID: "c", Key: "k\xff", Body: nil},
		{ID: "d", Headers: map[string]string{"id": "header named id", "key": "v"}},
	}
	for _, m := range tests {
		t.Run(m.ID, func(t *testing.T) {
			got := decode("topic", redis.XMessage{ID: "1700000000000-5", Values: values(encode(m))})
			if got.ID != m.ID || got.Key != m.Key || !bytes.Equal(got.Body, m.Body) || got.Topic != "topic" || got.Attempt != 1 {
				t.Errorf("got %+v, want %+v", got, m)
			}
			if fmt.Sprint(got.Headers) != fmt.Sprint(m.Headers) && len(got.Headers)+len(m.Headers) > 0 {
				t.Errorf("headers %v, want %v", got.Headers, m.Headers)
			}
			if !got.Timestamp.Equal(time.UnixMilli(1700000000000)) {
				t.Errorf("timestamp %v", got.Timestamp)
			}
			if n := encodedSize(m); n < m.Size() {
				t.Errorf("encodedSize %d < Size %d", n, m.Size())
			}
		})
	}
}

func TestDecodeForeign(t *testing.T) {
	tests := []struct {
		name   string
		values map[string]any
		want   mq.Message
	}{
		{"body only", map[string]any{"body": "hello"}, mq.Message{ID: "5-1", Body: []byte("hello")}},
		{"no fields", map[string]any{}, mq.Message{ID: "5-1"}},
		{"nil values", nil, mq.Message{ID: "5-1"}},
		{"other fields become headers", map[string]any{"body": "b", "source": "cli", "h:source": "sdk"},
			mq.Message{ID: "5-1", Body: []byte("b"), Headers: map[string]string{"source": "sdk"}}},
		{"plain fields", map[string]any{"event": "signup", "user": "42"},
			mq.Message{ID: "5-1", Headers: map[string]string{"event": "signup", "user": "42"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := decode("t", redis.XMessage{ID: "5-1", Values: tc.values})
			if got.ID != tc.want.ID || !bytes.Equal(got.Body, tc.want.Body) || fmt.Sprint(got.Headers) != fmt.Sprint(tc.want.Headers) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestShardOfIsStable(t *testing.T) {
	// The shard of a key is part of the wire format: other programs must
	// be able to compute it (FNV-1a 32 of the key, modulo the shard count).
	for _, tc := range []struct {
		key  string
		n    int
		want int
	}{{"a", 4, 0xe40c292c % 4}, {"order-17", 8, 0}, {"", 1, 0}} {
		m := &mq.Message{Key: tc.key, ID: "x"}
		if tc.key == "order-17" {
			// computed independently: FNV-1a("order-17") = 0xd43044ae
			tc.want = 0xd43044ae % 8
		}
		if got := shardOf(m, tc.n); got != tc.want {
			t.Errorf("shardOf(%q, %d) = %d, want %d", tc.key, tc.n, got, tc.want)
		}
	}
}
