package main

import (
	"context"
	"fmt"

	"github.com/mqkit/mq/kafka"
	"github.com/mqkit/mq/rabbit"
	"github.com/mqkit/mq/redisstream"
)

// lag prints how far a consumer group is behind on a topic, on the
// backends that can tell.
func (a *app) lag(ctx context.Context, args []string) int {
	fs := a.flags("lag")
	url := a.urlFlag(fs)
	topic := fs.String("topic", "", "topic (required)")
	group := fs.String("group", "", "consumer group (required)")
	if code, ok := a.parse(fs, args); !ok {
		return code
	}
	if *topic == "" || *group == "" {
		return a.usageErr(fs, "-topic and -group are required")
	}
	c, code := a.connect(ctx, "lag", readOnlyURL(a.brokerURL(*url)))
	if c == nil {
		return code
	}
	defer c.Close()
	switch conn := c.Conn().(type) {
	case *kafka.Conn:
		parts, err := conn.Lag(ctx, *topic, *group)
		if err != nil {
			a.fail("lag", err)
			return exitFailure
		}
		var total int64
		fmt.Fprintf(a.stdout, "%-10s %12s %12s %10s\n", "partition", "committed", "end", "lag")
		for _, p := range parts {
			fmt.Fprintf(a.stdout, "%-10d %12d %12d %10d\n", p.Partition, p.Committed, p.End, p.Lag)
			total += p.Lag
		}
		fmt.Fprintf(a.stdout, "total lag %d\n", total)
	case *redisstream.Conn:
		pending, lag, err := conn.Lag(ctx, *topic, *group)
		if err != nil {
			a.fail("lag", err)
			return exitFailure
		}
		lagText := fmt.Sprint(lag)
		if lag < 0 {
			lagText = "unknown (Redis cannot tell for this stream)"
		}
		fmt.Fprintf(a.stdout, "pending %d (delivered, not acknowledged)\nlag %s (not yet delivered)\n", pending, lagText)
	case *rabbit.Conn:
		ready, err := conn.Lag(ctx, *topic, *group)
		if err != nil {
			a.fail("lag", err)
			return exitFailure
		}
		fmt.Fprintf(a.stdout, "ready %d (messages in the group's queue, not yet delivered)\n", ready)
	default:
		fmt.Fprintf(a.stderr, "mq lag: the %s backend does not report lag\n", c)
		return exitFailure
	}
	return exitOK
}
