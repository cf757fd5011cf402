package main

// The backends this command can reach, by URL scheme. Adding a broker is one
// blank import here.
import (
	_ "github.com/mqkit/mq/kafka"       // kafka://
	_ "github.com/mqkit/mq/memory"      // mem://
	_ "github.com/mqkit/mq/rabbit"      // amqp://, amqps://
	_ "github.com/mqkit/mq/redisstream" // redis://, rediss://, redis+cluster://, redis+sentinel://
)
