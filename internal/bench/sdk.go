package bench

import (
	"context"
	"fmt"
	"net/url"
	"strconv"

	"github.com/mqkit/mq"
	_ "github.com/mqkit/mq/kafka"       // kafka://
	_ "github.com/mqkit/mq/memory"      // mem://
	_ "github.com/mqkit/mq/rabbit"      // amqp://
	_ "github.com/mqkit/mq/redisstream" // redis://
)

// SDK runs the workload through the mqkit SDK: one mq.Client per session,
// its Producer, and a Consumer with the workload's concurrency.
type SDK struct {
	// URL is the broker URL. For kafka:// the session adds
	// create_topics=true unless the URL sets it; for mem:// it adds a
	// capacity that holds every message of a phase unless the URL sets
	// one.
	URL string
	// Connect opens the client; default mq.Open.
	Connect func(ctx context.Context, url string, opts ...mq.Option) (*mq.Client, error)
	// Options are passed to Open.
	Options []mq.Option
}

// Name returns "sdk".
func (SDK) Name() string { return "sdk" }

// Open implements System.
func (s SDK) Open(ctx context.Context, setup Setup) (Session, error) {
	u, err := sdkURL(s.URL, setup)
	if err != nil {
		return nil, err
	}
	open := s.Connect
	if open == nil {
		open = mq.Open
	}
	c, err := open(ctx, u, s.Options...)
	if err != nil {
		return nil, err
	}
	cons, err := c.Consumer(ctx, setup.Topic, mq.WithGroup(setup.Group), mq.WithConcurrency(setup.Concurrency))
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return &sdkSession{c: c, p: c.Producer(), cons: cons, topic: setup.Topic}, nil
}

// sdkURL adds the parameters a benchmark needs to rawURL.
func sdkURL(rawURL string, setup Setup) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%w %s", mq.ErrInvalidURL, mq.RedactURL(rawURL))
	}
	q := u.Query()
	switch u.Scheme {
	case "kafka":
		if !q.Has("create_topics") {
			q.Set("create_topics", "true")
		}
	case "mem":
		if !q.Has("capacity") {
			q.Set("capacity", strconv.Itoa(max(setup.Messages, 10000)))
		}
	default:
		return rawURL, nil
	}
	u.RawQuery = q.Encode()
	s := u.String()
	if u.Scheme == "mem" && u.Host == "" && u.Path == "" {
		s = "mem://?" + u.RawQuery // url.URL.String drops the "//"
	}
	return s, nil
}

type sdkSession struct {
	c     *mq.Client
	p     mq.Producer
	cons  mq.Consumer
	topic string
}

func (s *sdkSession) Produce(ctx context.Context, msgs []Message) error {
	ms := make([]mq.Message, len(msgs))
	ptrs := make([]*mq.Message, len(msgs))
	for i, m := range msgs {
		ms[i] = mq.Message{Key: m.Key, Body: m.Body}
		ptrs[i] = &ms[i]
	}
	return s.p.Produce(ctx, s.topic, ptrs...)
}

func (s *sdkSession) Consume(ctx context.Context, h Handler) error {
	return s.cons.Consume(ctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		h(m.Key, m.Body)
		return nil
	}))
}

func (s *sdkSession) Close() error {
	return s.c.Close()
}
