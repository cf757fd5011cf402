// Package rabbit is the RabbitMQ backend of mq, on
// github.com/rabbitmq/amqp091-go. Importing it registers the amqp:// and
// amqps:// URL schemes:
//
//	import _ "github.com/mqkit/mq/rabbit"
//
//	c, err := mq.Open(ctx, "amqp://user:pass@rabbit:5672/vhost?queue_type=quorum")
//
// or, with a Config and no registry, mq.NewClient(rabbit.Dial(ctx, cfg)).
// See ParseURL for the URL's query parameters.
//
// # Topology
//
// A topic is a durable exchange of that name (type topic, or fanout with
// exchange_type=fanout). A consumer group is a durable queue named
// "<topic>.<group>", bound to the exchange with "#": consumers of one group
// share its messages, and every group gets every message produced after
// it was created. Queues are classic, or quorum with queue_type=quorum.
// Messages produced while a topic has no group go to the queue
// "<topic>.unrouted" (through the exchange's alternate exchange) rather
// than vanishing, and are not handed to groups created later ("unrouted"
// is therefore not a valid group name); with unrouted=error they fail
// Produce instead. With
// declare=false nothing is declared (operators own the topology): a missing
// exchange or queue is an error wrapping ErrNotFound.
//
// # Producing
//
// Messages are persistent and published with mandatory set, on channels in
// confirm mode, up to confirm_window at a time; Produce returns after the
// broker confirmed every message, and a message it returns (unroutable)
// or nacks is an error (ErrUnroutable, ErrNacked). The ID is the AMQP
// message-id; Headers go in the headers table; Key goes in the x-mq-key
// header (exactly) and is the routing key (the message ID when the key is
// empty, a SHA-256 of keys over 255 bytes). Header names starting with
// "x-mq-", and x-delivery-count, are reserved. Messages over
// max_message_size (default 16 MiB, RabbitMQ 4's default) fail with
// mq.ErrMessageTooLarge before anything is sent.
//
// # Consuming
//
// Consumers acknowledge manually, with a prefetch of the consumer's
// max in-flight per queue. Attempt comes from the broker: on quorum queues
// it is x-delivery-count + 1, exact across redeliveries. Classic queues
// keep no count, only a redelivered flag, so Attempt is 2 for every
// redelivery by the broker (in-process retries by the portable consumer
// still count up exactly); AMQP cannot change a message's headers when it
// returns it to a queue, so no header of our own can count either. Use
// quorum queues where the attempt count matters.
//
// Native dead-lettering: with dead_letter_exchange=NAME, group queues
// dead-letter to that exchange (declared fanout, with a queue of the same
// name), and Conn.DeadLetter gives middleware that rejects a message after
// a number of attempts, or on a permanent error, so the broker moves it
// there with its x-death history. It is an alternative to package dlq's
// middleware, which republishes dead letters itself. On quorum queues,
// delivery_limit=N makes the broker dead-letter a message returned more
// than N times. Note that RabbitMQ 4 gives quorum queues a delivery limit of
// 20 by default.
//
// # Recovery
//
// amqp091-go does not reconnect (its built-in recovery is experimental and
// left off). This package does: a dropped connection or channel (broker
// restart, network cut, heartbeat timeout) is dialed again with
// exponential backoff (reconnect_backoff to max_reconnect_backoff), the
// topology declared again, and consuming resumes. A Produce in progress or
// started during the outage waits, bounded by its context, and publishes
// every message not yet confirmed again on the new connection: it returns
// nil only when all are confirmed, so some may arrive twice (at-least-once),
// never not at all. Deliveries received on a channel that has since closed
// cannot be acknowledged: their Ack returns an error, the portable
// consumer logs it, and the broker delivers them again.
//
// # Per-key order across instances
//
// One consumer keeps per-key order by itself. Several instances of a group
// on one queue do not: RabbitMQ hands out a queue's messages round-robin.
// With shards=N, a group gets N queues "<topic>.<group>.shard-<i>", fed by
// a consistent-hash exchange "<topic>.<group>.shards" (plugin
// rabbitmq_consistent_hash_exchange) that puts each key on one shard, and
// each queue has a single active consumer (x-single-active-consumer).
// Every instance consumes all N queues; the broker lets one consumer of each
// queue receive, so each key is handled by one instance at a time, in
// order, and another instance takes over a shard when its consumer leaves.
//
// The trade-off: a shard's throughput is one instance's, and RabbitMQ
// makes the earliest consumer of each queue the active one, so instances
// started one after another do not split the shards between them: extra
// instances are hot standbys, not extra capacity. Pick N for the
// parallelism one instance needs (the portable consumer runs different
// keys concurrently within it). N is part of the topology: changing it
// needs new queues. A sharded consumer that stops receiving without
// closing (Consume returned, Close not called) keeps its shards. After a
// connection failure the broker hands the unacknowledged messages of the
// failed channel to another instance while handlers on the old one may
// still be running, so around failures a key can be handled twice, and
// briefly by two instances.
//
// # Other methods
//
// Conn.Lag returns the messages waiting in a group's queues, and
// Conn.QueueNames their names. Reach the Conn of an mq.Client with
// client.Conn().(*rabbit.Conn).
package rabbit
