package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq/rabbit"
)

// bareRabbit is the workload on amqp091-go alone, with the topology the
// SDK declares: a durable topic exchange per topic, a durable queue
// "<topic>.<group>" bound with "#".
type bareRabbit struct {
	cfg rabbit.Config
}

func newBareRabbit(u *url.URL) (System, error) {
	cfg, err := rabbit.ParseURL(u.String())
	if err != nil {
		return nil, err
	}
	if cfg.Shards > 1 || cfg.DeadLetterExchange != "" {
		return nil, errors.New("bench: the bare RabbitMQ run supports neither shards nor dead_letter_exchange")
	}
	if cfg.ConfirmWindow == 0 {
		cfg.ConfirmWindow = rabbit.DefaultConfirmWindow
	}
	if cfg.ExchangeType == "" {
		cfg.ExchangeType = amqp.ExchangeTopic
	}
	return bareRabbit{cfg: cfg}, nil
}

func (bareRabbit) Name() string { return "bare" }

func (b bareRabbit) Open(ctx context.Context, s Setup) (Session, error) {
	conn, err := amqp.Dial(b.cfg.URL)
	if err != nil {
		return nil, err
	}
	rs := &rabbitSession{cfg: b.cfg, conn: conn, topic: s.Topic, queue: s.Topic + "." + s.Group, conc: s.Concurrency}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	defer ch.Close()
	var args amqp.Table
	if b.cfg.QueueType == rabbit.Quorum {
		args = amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}
	}
	if err := ch.ExchangeDeclare(s.Topic, b.cfg.ExchangeType, true, false, false, false, nil); err != nil {
		_ = conn.Close()
		return nil, err
	}
	if _, err := ch.QueueDeclare(rs.queue, true, false, false, false, args); err != nil {
		_ = conn.Close()
		return nil, err
	}
	if err := ch.QueueBind(rs.queue, "#", s.Topic, false, nil); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return rs, nil
}

type rabbitSession struct {
	cfg   rabbit.Config
	conn  *amqp.Connection
	topic string
	queue string
	conc  int

	mu   sync.Mutex
	idle []*confirmChan // publishing channels not in use
}

// confirmChan is a channel in confirm mode, used by one Produce at a time.
type confirmChan struct {
	ch      *amqp.Channel
	returns chan amqp.Return
}

func (r *rabbitSession) getChan() (*confirmChan, error) {
	r.mu.Lock()
	if n := len(r.idle); n > 0 {
		c := r.idle[n-1]
		r.idle = r.idle[:n-1]
		r.mu.Unlock()
		return c, nil
	}
	r.mu.Unlock()
	ch, err := r.conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	return &confirmChan{ch: ch, returns: ch.NotifyReturn(make(chan amqp.Return, r.cfg.ConfirmWindow+1))}, nil
}

func (r *rabbitSession) putChan(c *confirmChan) {
	r.mu.Lock()
	r.idle = append(r.idle, c)
	r.mu.Unlock()
}

// Produce publishes persistent, mandatory messages with deferred confirms,
// up to the confirm window in flight, and waits for every confirm.
func (r *rabbitSession) Produce(ctx context.Context, msgs []Message) error {
	c, err := r.getChan()
	if err != nil {
		return err
	}
	window := make([]*amqp.DeferredConfirmation, 0, min(len(msgs), r.cfg.ConfirmWindow))
	head := 0
	wait := func() error {
		dc := window[head]
		head++
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("publish nacked by the broker")
		}
		return nil
	}
	for _, m := range msgs {
		if len(window)-head >= r.cfg.ConfirmWindow {
			if err := wait(); err != nil {
				_ = c.ch.Close()
				return err
			}
		}
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, r.topic, m.Key, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			Body:         m.Body,
		})
		if err != nil {
			_ = c.ch.Close()
			return err
		}
		window = append(window, dc)
	}
	for head < len(window) {
		if err := wait(); err != nil {
			_ = c.ch.Close()
			return err
		}
	}
	select {
	case ret := <-c.returns:
		_ = c.ch.Close()
		return fmt.Errorf("message returned: %d %s", ret.ReplyCode, ret.ReplyText)
	default:
	}
	r.putChan(c)
	return nil
}

// Consume acknowledges each message manually after its handler, with a
// prefetch of the bare window (BareInFlight) unless the URL sets one.
func (r *rabbitSession) Consume(ctx context.Context, h Handler) error {
	ch, err := r.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	prefetch := r.cfg.Prefetch
	if prefetch == 0 {
		prefetch = bareWindow(r.conc)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return err
	}
	const tag = "bench"
	ds, err := ch.ConsumeWithContext(ctx, r.queue, tag, false, false, false, false, nil)
	if err != nil {
		return err
	}
	w := startWorkers(r.conc, prefetch, func(d amqp.Delivery) {
		h(d.RoutingKey, d.Body)
		_ = d.Ack(false)
	})
	defer w.stop()
	for {
		select {
		case d, ok := <-ds:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("delivery channel closed")
			}
			submit(w, d.RoutingKey, d)
		case <-ctx.Done():
			_ = ch.Cancel(tag, false)
			return nil
		}
	}
}

func (r *rabbitSession) Close() error {
	return r.conn.Close()
}
