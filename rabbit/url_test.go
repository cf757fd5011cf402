package rabbit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/rabbit"
)

const secret = "s3cr3t-pw"

func TestParseURL(t *testing.T) {
	tests := []struct {
		url  string
		want rabbit.Config
	}{
		{"amqp://guest:guest@localhost:5672/", rabbit.Config{URL: "amqp://guest:guest@localhost:5672/"}},
		{"amqps://u:" + secret + "@rabbit.example:5671/prod", rabbit.Config{URL: "amqps://u:" + secret + "@rabbit.example:5671/prod"}},
		{"amqp://h/?queue_type=quorum&declare=false&shards=4", rabbit.Config{URL: "amqp://h/", QueueType: rabbit.Quorum, DisableDeclare: true, Shards: 4}},
		{"amqp://h/?exchange_type=fanout&unrouted=error&dead_letter_exchange=dlx", rabbit.Config{URL: "amqp://h/", ExchangeType: "fanout", DisableUnroutedQueue: true, DeadLetterExchange: "dlx"}},
		{"amqp://h/?queue_type=quorum&delivery_limit=5&max_message_size=1024&confirm_window=10&prefetch=7",
			rabbit.Config{URL: "amqp://h/", QueueType: rabbit.Quorum, DeliveryLimit: 5, MaxMessageSize: 1024, ConfirmWindow: 10, Prefetch: 7}},
		{"amqp://h/?reconnect_backoff=50ms&max_reconnect_backoff=2s", rabbit.Config{URL: "amqp://h/", ReconnectBackoff: 50 * time.Millisecond, MaxReconnectBackoff: 2 * time.Second}},
		// amqp091's own parameters stay in the URL for it.
		{"amqp://h/?heartbeat=5&connection_timeout=2000&shards=2", rabbit.Config{URL: "amqp://h/?connection_timeout=2000&heartbeat=5", Shards: 2}},
		{"amqp://h/vhost?declare=true&unrouted=keep", rabbit.Config{URL: "amqp://h/vhost"}},
		{"amqp://h/?unrouted=hold", rabbit.Config{URL: "amqp://h/", HoldUnrouted: true}},
		{"amqp://h/?ack_delay=5ms", rabbit.Config{URL: "amqp://h/", AckDelay: 5 * time.Millisecond}},
		{"amqp://h/?ack_delay=0", rabbit.Config{URL: "amqp://h/", AckDelay: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			got, err := rabbit.ParseURL(tc.url)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			if fmt.Sprintf("%#v|%s", got, got.URL) != fmt.Sprintf("%#v|%s", tc.want, tc.want.URL) ||
				got.DeliveryLimit != tc.want.DeliveryLimit || got.MaxMessageSize != tc.want.MaxMessageSize ||
				got.ConfirmWindow != tc.want.ConfirmWindow || got.Prefetch != tc.want.Prefetch ||
				got.ReconnectBackoff != tc.want.ReconnectBackoff || got.MaxReconnectBackoff != tc.want.MaxReconnectBackoff {
				t.Errorf("ParseURL(%q)\n got %#v (URL %s)\nwant %#v (URL %s)", tc.url, got, got.URL, tc.want, tc.want.URL)
			}
		})
	}
}

func TestParseURLErrors(t *testing.T) {
	tests := []struct {
		url      string
		mentions string
	}{
		{"amqp://u:" + secret + "@h/?colour=blue", `parameter "colour"`},
		{"amqp://u:" + secret + "@h/?queue_type=stream", "queue_type"},
		{"amqp://u:" + secret + "@h/?exchange_type=direct", "exchange_type"},
		{"amqp://u:" + secret + "@h/?declare=maybe", "declare"},
		{"amqp://u:" + secret + "@h/?unrouted=drop", "unrouted"},
		{"amqp://u:" + secret + "@h/?unrouted=drop", "keep, hold or error"},
		{"amqp://u:" + secret + "@h/?shards=0", "shards"},
		{"amqp://u:" + secret + "@h/?shards=x", "shards"},
		{"amqp://u:" + secret + "@h/?delivery_limit=3", "queue_type=quorum"},
		{"amqp://u:" + secret + "@h/?max_message_size=-1", "max_message_size"},
		{"amqp://u:" + secret + "@h/?reconnect_backoff=soon", "reconnect_backoff"},
		{"amqp://u:" + secret + "@h/?ack_delay=-1ms", "ack_delay"},
		{"amqp://u:" + secret + "@h/?ack_delay=soon", "ack_delay"},
		{"amqp://u:" + secret + "@h/?dead_letter_exchange=", "dead_letter_exchange"},
		{"amqp://u:" + secret + "@h/?heartbeat=notanumber", "heartbeat"},
		{"amqp://u:" + secret + "@h:port/", ""},
		{"amqp://u:" + secret + "@h/%zz", ""},
		{"amqp://u:" + secret + "@h/#frag", "fragment"},
		{"kafka://u:" + secret + "@h/", "scheme"},
		{"amqp:opaque", ""},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			_, err := rabbit.ParseURL(tc.url)
			if err == nil {
				t.Fatalf("ParseURL(%q) succeeded, want an error", tc.url)
			}
			if !errors.Is(err, mq.ErrInvalidURL) {
				t.Errorf("error %q does not wrap mq.ErrInvalidURL", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
			if !strings.Contains(err.Error(), tc.mentions) {
				t.Errorf("error %q does not mention %q", err, tc.mentions)
			}
		})
	}
}

// mq.Open reports bad URLs the same way, before dialing anything.
func TestOpenRejectsBadURL(t *testing.T) {
	for _, u := range []string{
		"amqp://u:" + secret + "@127.0.0.1:1/?nope=1",
		"amqps://u:" + secret + "@127.0.0.1:1/?shards=-2",
	} {
		_, err := mq.Open(context.Background(), u)
		if !errors.Is(err, mq.ErrInvalidURL) {
			t.Errorf("Open(%q) = %v, want ErrInvalidURL", u, err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("Open error %q contains the password", err)
		}
	}
}

// An unreachable broker fails Open within its context, without the
// password in the error or the logs.
func TestDialUnreachable(t *testing.T) {
	var logs strings.Builder
	cfg, err := rabbit.ParseURL("amqp://u:" + secret + "@127.0.0.1:1/")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = rabbit.Dial(ctx, cfg)
	if err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
	for _, s := range []string{err.Error(), logs.String(), cfg.String(), fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg)} {
		if strings.Contains(s, secret) {
			t.Errorf("password leaked: %q", s)
		}
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("error %q does not name the broker", err)
	}
}
