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
			got := decode("topic", "topic", redis.XMessage{ID: "1700000000000-5", Values: values(encode(m))})
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

// TestDecodeForeign pins how entries that other programs wrote, not in the
// SDK's encoding, become messages: the entry ID is the message ID, an id
// field is a header, and a value is never dropped for want of a body
// field.
func TestDecodeForeign(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		values map[string]any
		want   mq.Message
	}{
		{"body only", "t", map[string]any{"body": "hello"}, mq.Message{ID: "5-1", Body: []byte("hello")}},
		{"no fields", "t", map[string]any{}, mq.Message{ID: "5-1"}},
		{"nil values", "t", nil, mq.Message{ID: "5-1"}},
		{"key and body", "t", map[string]any{"key": "k", "body": "b"}, mq.Message{ID: "5-1", Key: "k", Body: []byte("b")}},
		{"empty id field", "t", map[string]any{"id": "", "body": "b"},
			mq.Message{ID: "5-1", Body: []byte("b"), Headers: map[string]string{"id": ""}}},
		{"other fields become headers", "t", map[string]any{"body": "b", "source": "cli", "h:source": "sdk"},
			mq.Message{ID: "5-1", Body: []byte("b"), Headers: map[string]string{"source": "sdk"}}},
		{"one plain field is the body", "t", map[string]any{"payload": `{"order":7}`},
			mq.Message{ID: "5-1", Body: []byte(`{"order":7}`), Headers: map[string]string{HeaderBodyFrom: "field:payload"}}},
		{"data", "t", map[string]any{"data": "\x00\xff", "key": "k", "h:trace": "t1"},
			mq.Message{ID: "5-1", Key: "k", Body: []byte("\x00\xff"), Headers: map[string]string{HeaderBodyFrom: "field:data", "trace": "t1"}}},
		{"an app's id is a header", "t", map[string]any{"id": "42", "payload": "p"},
			mq.Message{ID: "5-1", Body: []byte("p"), Headers: map[string]string{"id": "42", HeaderBodyFrom: "field:payload"}}},
		{"several plain fields: a JSON body", "t", map[string]any{"event": "signup", "user": "42", "id": "9"},
			mq.Message{ID: "5-1", Body: []byte(`{"event":"signup","user":"42"}`),
				Headers: map[string]string{"event": "signup", "user": "42", "id": "9", HeaderBodyFrom: "json"}}},
		{"sharded: the stream names the ID", "{t}:3", map[string]any{"body": "b"}, mq.Message{ID: "{t}:3/5-1", Body: []byte("b")}},
		{"native on a shard", "{t}:3", map[string]any{"id": "m1", "body": "b"}, mq.Message{ID: "m1", Body: []byte("b")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := decode("t", tc.stream, redis.XMessage{ID: "5-1", Values: tc.values})
			if got.ID != tc.want.ID || got.Key != tc.want.Key || !bytes.Equal(got.Body, tc.want.Body) || fmt.Sprint(got.Headers) != fmt.Sprint(tc.want.Headers) {
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
