package urlparams

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestQuery(t *testing.T) {
	v, _ := url.ParseQuery("n=3&d=250ms&b=true&e=fast&s=y&n2=0&f=ok&keep=1")
	q := New(v)
	var (
		n, n2 int
		d     time.Duration
		b     bool
		e, s  string
		f     string
	)
	q.Int("n", &n, 1)
	q.Int("n2", &n2, 0)
	q.Duration("d", &d, time.Millisecond)
	q.Bool("b", &b)
	q.Enum("e", &e, "fast", "slow")
	q.String("s", &s)
	q.Func("f", func(v string) error { f = v; return nil })
	kept := q.Keep("keep", "absent")
	if absent := q.Int("absent", &n, 1); absent {
		t.Error("Int reported an absent parameter as present")
	}
	if err := q.Err("test://"); err != nil {
		t.Fatal(err)
	}
	if n != 3 || n2 != 0 || d != 250*time.Millisecond || !b || e != "fast" || s != "y" || f != "ok" || kept.Get("keep") != "1" || kept.Has("absent") {
		t.Fatalf("got n=%d n2=%d d=%v b=%v e=%q s=%q f=%q kept=%v", n, n2, d, b, e, s, f, kept)
	}
	if v.Get("n") != "3" {
		t.Error("New modified the caller's values")
	}
}

func TestQueryErrors(t *testing.T) {
	v, _ := url.ParseQuery("n=0&d=soon&d2=1us&b=maybe&e=medium&bogus=1&also=2&e=slow")
	q := New(v)
	var n int
	var d, d2 time.Duration
	var b bool
	var e string
	q.Int("n", &n, 1)
	q.Duration("d", &d, 0)
	q.Duration("d2", &d2, time.Millisecond)
	q.Bool("b", &b)
	q.Enum("e", &e, "fast", "slow", "stopped")
	err := q.Err("test://")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`n="0": want a whole number above 0`,
		`d="soon": want a duration such as 250ms or 5s`,
		`d2="1us": want a duration of at least 1ms`,
		`b="maybe": want true or false`,
		"parameter e given 2 times",
		`unknown test:// parameter "also" (known: b, d, d2, e, n)`,
		`unknown test:// parameter "bogus"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n != 0 || d != 0 || b || e != "" {
		t.Error("a malformed value was stored")
	}
}
