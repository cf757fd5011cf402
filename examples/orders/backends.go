package main

// The backends MQ_URL may name: each registers its URL scheme.
import (
	_ "github.com/mqkit/mq/kafka"
	_ "github.com/mqkit/mq/memory"
	_ "github.com/mqkit/mq/rabbit"
	_ "github.com/mqkit/mq/redisstream"
)
