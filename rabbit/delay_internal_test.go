package rabbit

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// DelayRelayed reports how many messages the relays of c moved into their
// topics, and how many they sent back into the levels (due later than the
// levels could hold them, or a step early), for the tests of package
// rabbit_test.
func DelayRelayed(c *Conn) (moved, back uint64) {
	return c.delays.moved.Load(), c.delays.back.Load()
}

// topicMatch is the broker's topic-exchange match of a routing key
// against a binding key ("*" one word, "#" zero or more).
func topicMatch(pattern, key string) bool {
	var match func(p, k []string) bool
	match = func(p, k []string) bool {
		if len(p) == 0 {
			return len(k) == 0
		}
		switch p[0] {
		case "#":
			for i := 0; i <= len(k); i++ {
				if match(p[1:], k[i:]) {
					return true
				}
			}
			return false
		case "*":
			return len(k) > 0 && match(p[1:], k[1:])
		}
		return len(k) > 0 && p[0] == k[0] && match(p[1:], k[1:])
	}
	return match(strings.Split(pattern, "."), strings.Split(key, "."))
}

// TestDelayLevelsRoute walks messages down the levels as the broker does,
// with the bindings declareLevelExchange and declareLevelQueue make, and
// checks that each waits in exactly the queues of its non-zero digits, u
// steps in all, and reaches the due exchange.
func TestDelayLevelsRoute(t *testing.T) {
	cases := []uint64{1, 2, 3, 5, 15, 16, 17, 255, 256, 937, delayMaxSteps, 1 << 24, 3 << 23, 31 << 20}
	for range 2000 {
		cases = append(cases, 1+rand.Uint64N(delayMaxSteps))
	}
	for _, u := range cases {
		for _, top := range []int{delayTop(u), min(delayTop(u)+2, delayLevels-1)} {
			key := delayRoutingKey(u, top)
			var waited int64
			hops := 0
			for k := top; k >= 0; k-- {
				var to []int
				for d := range delayRadix {
					if topicMatch(delayPattern(k, d), key) {
						to = append(to, d)
					}
				}
				if len(to) != 1 {
					t.Fatalf("u=%d key %q at level %d: bindings for digits %v match, want exactly one", u, key, k, to)
				}
				if d := to[0]; d != 0 {
					if ttl := delayTTL(k, d); ttl > maxTTL {
						t.Fatalf("u=%d: queue %d of level %d has TTL %d ms, over RabbitMQ's limit", u, d, k, ttl)
					}
					waited += delayTTL(k, d)
					hops++
				}
			}
			if waited != int64(u)*delayStep.Milliseconds() {
				t.Fatalf("u=%d key %q: waited %d ms, want %d", u, key, waited, int64(u)*delayStep.Milliseconds())
			}
			want := 0
			for k := 0; k <= top; k++ {
				if delayDigit(u, k) != 0 {
					want++
				}
			}
			if hops != want || hops > delayLevels {
				t.Fatalf("u=%d: %d hops, want %d", u, hops, want)
			}
		}
	}
}

// TestDelaySteps: a delay is rounded up to steps, never down, and a
// delay beyond the levels takes all of them (the relay sends the
// message round again).
func TestDelaySteps(t *testing.T) {
	now := time.Now()
	for _, r := range []time.Duration{-time.Hour, 0, time.Nanosecond, time.Millisecond, delayStep - delayMargin, delayStep, time.Second,
		time.Minute, 24 * time.Hour, 49 * 24 * time.Hour} {
		u := delaySteps(now.Add(r), now)
		if u < 1 {
			t.Fatalf("delay %v: %d steps", r, u)
		}
		if got := time.Duration(u) * delayStep; r > 0 && (got < r+delayMargin || got >= r+delayMargin+delayStep) {
			t.Errorf("delay %v: %d steps = %v, want the delay plus %v rounded up to %v", r, u, got, delayMargin, delayStep)
		}
	}
	if u := delaySteps(now.Add(366*24*time.Hour), now); u != delayMaxSteps {
		t.Errorf("366 days: %d steps, want all the levels (%d)", u, delayMaxSteps)
	}
	if top, d := delayTop(delayMaxSteps), delayDigit(delayMaxSteps, delayLevels-1); top != delayLevels-1 || delayTTL(top, d) > maxTTL || delayTTL(top, d+1) <= maxTTL {
		t.Errorf("the largest queue is digit %d of level %d, TTL %d ms; want the largest within %d ms", d, top, delayTTL(top, d), maxTTL)
	}
	if got := delayQueueName("orders", 1, 3); got != "orders.mq-delay.12288" {
		t.Errorf("queue 3 of level 1 of orders is named %q", got)
	}
	if got := delayRoutingKey(9+10<<(2*delayDigitBits), 2); got != "9.0.a" {
		t.Errorf("routing key of digits 9, 0, 10 = %q", got)
	}
	if got := delayRoutingKey(31+17<<delayDigitBits, 1); got != "v.h" {
		t.Errorf("routing key of digits 31, 17 = %q", got)
	}
}
