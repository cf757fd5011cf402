package mq_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/mqkit/mq"
)

// FuzzOpen feeds arbitrary URLs to Open (only mem:// is registered in this
// test binary, so nothing dials out). Open must never panic, must succeed
// or fail with a classified error, and must never echo a password.
func FuzzOpen(f *testing.F) {
	for _, s := range []string{
		"mem://", "mem://?capacity=10&when_full=error", "mem://?group=g&concurrency=8",
		"kafka://user:pa55word@h1:9092,h2:9092/?sasl=plain", "amqp://guest:guest@localhost:5672/vhost",
		"redis://:tok3n@[::1]:6379/0", "amqp://u:p@h:%zz/", "mem://?concurrency=-1", "::::", "",
		"mem://?shutdown_timeout=1h&nack_backoff=1ms&max_nack_backoff=1s", "rediss+cluster://a:1,b:2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := mq.Open(context.Background(), raw)
		if err == nil {
			if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(raw)), "mem:") {
				t.Fatalf("Open(%q) succeeded for a scheme that is not registered", raw)
			}
			_ = c.Close()
			return
		}
		if !errors.Is(err, mq.ErrInvalidURL) && !errors.Is(err, mq.ErrUnknownScheme) && !strings.Contains(err.Error(), "mq: ") {
			t.Fatalf("Open(%q) = %v: not a classified mq error", raw, err)
		}
		if u, perr := url.Parse(raw); perr == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && len(pw) >= 4 && !strings.Contains(u.Redacted(), pw) &&
				!strings.Contains(strings.Replace(raw, pw, "", 1), pw) && strings.Contains(err.Error(), pw) {
				t.Fatalf("Open(%q) error shows the password %q: %v", raw, pw, err)
			}
		}
	})
}

// FuzzRedactURL: whatever the input, a password between "user:" and "@"
// never survives redaction.
func FuzzRedactURL(f *testing.F) {
	f.Add("amqp", "user", "s3cret-pw", "host:5672/x?y=1")
	f.Add("kafka", "a", "b@c", "h:9092")
	f.Add("redis", "", "tok", "[::1]:6379/0")
	f.Fuzz(func(t *testing.T, scheme, user, pass, rest string) {
		if len(pass) < 4 || strings.ContainsAny(pass+user, "/?#@") || strings.Contains(user, ":") || strings.ContainsAny(rest, "@") ||
			strings.Contains(scheme+"://"+user+":xxxxx@"+rest, pass) || strings.ContainsAny(scheme, ":/?#@") {
			return // the password would show up elsewhere in the URL anyway
		}
		for _, r := range user + rest {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:/?=&-_[]", r) {
				return // escaping could spell the password by chance (" 0" -> "%200")
			}
		}
		raw := scheme + "://" + user + ":" + pass + "@" + rest
		if got := mq.RedactURL(raw); strings.Contains(got, pass) {
			t.Fatalf("RedactURL(%q) = %q keeps the password", raw, got)
		}
	})
}
