package main

import (
	"context"
	"net/url"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq/internal/bench"
)

// watermillAMQP runs the workload through watermill-amqp with its durable
// queue configuration (a durable queue named after the topic, persistent
// messages), with publisher confirms on (Publish waits for each
// message's confirm, the durability the SDK gives) and a prefetch of
// bench.BareInFlight instead of the configuration's 1, so that Watermill
// keeps as many messages in flight as the bare consumer does.
type watermillAMQP struct{ uri string }

func newWatermillAMQP(rawURL string) (bench.System, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	u.RawQuery = "" // the SDK's parameters mean nothing to amqp091's Dial
	return watermillAMQP{uri: u.String()}, nil
}

func (watermillAMQP) Name() string { return "watermill" }

func (w watermillAMQP) config() wamqp.Config {
	cfg := wamqp.NewDurableQueueConfig(w.uri)
	cfg.Publish.ConfirmDelivery = true
	cfg.Consume.Qos.PrefetchCount = bench.BareInFlight
	return cfg
}

func (w watermillAMQP) Open(ctx context.Context, s bench.Setup) (bench.Session, error) {
	// The queue must exist before anything is produced (the messages go
	// through the default exchange, routed by the queue's name); the
	// Subscriber declares it the same way later.
	conn, err := amqp.Dial(w.uri)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(s.Topic, true, false, false, false, nil)
	}
	_ = conn.Close()
	if err != nil {
		return nil, err
	}
	pub, err := wamqp.NewPublisher(w.config(), watermill.NopLogger{})
	if err != nil {
		return nil, err
	}
	return &wmSession{
		pub:   pub,
		topic: s.Topic,
		newSub: func() (message.Subscriber, error) {
			return wamqp.NewSubscriber(w.config(), watermill.NopLogger{})
		},
		close: func() error { return nil },
	}, nil
}
