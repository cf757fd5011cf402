package redisstream

import (
	"net/url"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// FuzzDecode: any stream entry, in any shape another program may write,
// becomes a message with an ID, without a panic, and its body field comes
// through byte for byte.
func FuzzDecode(f *testing.F) {
	f.Add("1700000000000-0", "body", "hello", "h:trace", "abc")
	f.Add("0-1", "id", "", "key", "k\xff")
	f.Add("garbage", "weird field", "\x00\x01", "h:", "")
	f.Fuzz(func(t *testing.T, entryID, f1, v1, f2, v2 string) {
		m := decode("t", "t", redis.XMessage{ID: entryID, Values: map[string]any{f1: v1, f2: v2}})
		if m == nil {
			t.Fatal("nil message")
		}
		if m.ID == "" && entryID != "" {
			t.Fatalf("entry %q decoded without an ID", entryID)
		}
		if f1 == FieldBody && f2 != FieldBody && string(m.Body) != v1 {
			t.Fatalf("body %q came out as %q", v1, m.Body)
		}
		if m.Timestamp.IsZero() {
			t.Fatal("zero timestamp")
		}
	})
}

// FuzzParseURL: no URL makes the parser panic, and a password never shows
// in its errors.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"redis://:pw1234@localhost:6379/0?claim_idle=5s", "rediss://u:p4ss@h:1/2?shards=4&shard_lease=3s",
		"redis+cluster://a:1,b:2?maxlen=100", "redis+sentinel://s1:1,s2:2/0?master=m", "redis://h/?bogus=1",
		"redis://h:1/notanumber", "redis://h/?password=leak1234",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		_, _, err = parseURL(u)
		if err == nil || u.User == nil {
			return
		}
		if pw, ok := u.User.Password(); ok && len(pw) >= 4 && !strings.Contains(u.Redacted(), pw) && strings.Contains(err.Error(), pw) {
			t.Fatalf("parseURL(%q) error shows the password: %v", raw, err)
		}
	})
}
