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
// than vanishing ("unrouted" is therefore not a valid group name); with
// unrouted=error they fail Produce instead. With
// declare=false nothing is declared (operators own the topology): a missing
// exchange or queue is an error wrapping ErrNotFound.
//
// # Messages produced before any group
//
// As on mem://, the first group to subscribe gets the messages produced
// before any group existed. Subscribe declares the group's queues, moves
// the messages of "<topic>.unrouted" into them, and only then binds them
// to the topic, so the early messages come before everything produced
// afterwards, in their order (per key; a message produced at the very
// moment of the binding can land behind later ones). A group created
// later finds the unrouted queue empty and does not get them. The move
// consumes the unrouted queue exclusively, publishes each message to the
// group with a publisher confirm and acknowledges it on the unrouted
// queue only after the confirm: a move cut off midway loses nothing (its
// unacknowledged messages go back to the unrouted queue and the next
// Subscribe, retried by Subscribe itself, moves them; one confirmed but
// not yet acknowledged then arrives twice). While one connection moves,
// other subscribers, of this group or another, wait for it (as long as it
// progresses, bounded by their context), so that a group is not bound
// before the move ends; the messages go to one group only. A moved
// message keeps its ID, properties and headers; its key is written to
// x-mq-key, and it reaches an unsharded group's queue through the default
// exchange (routing key: the queue's name) or a sharded group's
// consistent-hash exchange with its routing key. Once every group of a
// topic is deleted (Conn.DeleteGroup), messages collect in the unrouted
// queue again, for the next group. Moving a large backlog takes time:
// Subscribe (Client.Consumer) returns when it is done. With declare=false
// nothing is moved.
//
// With unrouted=hold (Config.HoldUnrouted) the messages stay in the
// unrouted queue and no group gets them. Nothing kept there is
// invisible: a subscription logs it once, and Conn.Lag counts it (see
// Conn.Backlog for the split).
//
// # Sharing exchanges with other clients
//
// mqkit declares a topic's exchange as durable, of type topic (or
// fanout), with the argument alternate-exchange = "<topic>.unrouted".
// RabbitMQ refuses (PRECONDITION_FAILED, closing the channel) a declare
// that differs from the existing exchange, so a foreign service that
// declares the exchange after mqkit must declare exactly that (in pika:
// exchange_declare(topic, "topic", durable=True,
// arguments={"alternate-exchange": topic + ".unrouted"})), or declare it
// passively. An exchange that another client declared first without the
// alternate exchange (or with its own) is used as it is, on a new
// channel, and logged once: messages produced while the topic has no
// group then fail Produce with ErrUnroutable (or go to that client's
// alternate exchange) instead of waiting for the first group. An existing
// exchange of another type or durability is an error that names the
// differing argument.
//
// # Producing
//
// Messages are persistent and published with mandatory set, on channels in
// confirm mode, up to confirm_window at a time; Produce returns after the
// broker confirmed every message, and a message it returns (unroutable)
// or nacks is an error (ErrUnroutable, ErrNacked). The ID is the AMQP
// message-id; Key goes in the x-mq-key header (exactly, and empty when
// there is none) and is the routing key (the message ID when the key is
// empty, a SHA-256 of keys over 255 bytes); the other Headers go in the
// headers table as strings, but for the headers named after basic
// properties (HeaderContentType and the others), which are sent as the
// property. Header names starting with "x-mq-", x-delivery-count and
// x-acquired-count, are reserved. Messages over max_message_size (default
// 16 MiB, RabbitMQ 4's default) fail with mq.ErrMessageTooLarge before
// anything is sent.
//
// # Messages from other clients
//
// A message published by a client that knows nothing of mqkit (pika, a
// Java service, the management UI) is read as follows:
//
//   - Key: the x-mq-key header when there is one, else the routing key
//     (which is what a consistent-hash exchange hashes, so per-key order
//     and shards follow it), except a routing key equal to the
//     message-id, which is how mqkit before x-mq-key was always set
//     sent a message without a key. A foreign producer whose routing
//     keys are not keys (a topic pattern such as "orders.created") gets
//     per-routing-key order: correct, but less concurrency; it can set
//     x-mq-key, even to "", to say what the key is.
//   - ID: the message-id. Without one, the ID is derived (a hash of the
//     topic, the key, the timestamp and other properties, the headers
//     but those starting with "x-", and the body): the same on every
//     redelivery, but distinct messages that agree on all of it (pika
//     sets no timestamp) share it. Such a message carries the header
//     mq.HeaderIDNotUnique = "true", and package idempotency does not
//     deduplicate it. Set message_id to have messages deduplicated.
//   - Headers: every entry of the headers table, as text: strings and
//     byte arrays as they are, integers, floats (shortest form that
//     reads back, "NaN", "+Inf") and decimals (12.34) in decimal,
//     booleans as true or false, timestamps in RFC 3339 (UTC), void (null,
//     None) as "", arrays and tables as JSON (decimals as JSON numbers;
//     byte arrays, timestamps and non-finite floats as JSON strings). The
//     value's AMQP type is not kept: produced again through mqkit, it is
//     a string.
//   - Properties: each basic property set becomes a header:
//     amqp-content-type, amqp-content-encoding, amqp-correlation-id,
//     amqp-reply-to, amqp-type, amqp-app-id, amqp-user-id,
//     amqp-expiration, amqp-priority (see HeaderContentType and the
//     constants after it); a property wins over a table entry of the same
//     name. Produced again, they are properties once more, but user-id
//     and expiration, which stay headers (see HeaderUserID and
//     HeaderExpiration). timestamp is Message.Timestamp; delivery-mode
//     is not carried (mqkit publishes persistent messages).
//
// # Consuming
//
// Consumers acknowledge manually, with a prefetch of the consumer's
// max in-flight per queue. Acknowledgements are coalesced: for up to
// Config.AckDelay (1 ms by default) or a quarter of the window, a run of
// messages settled in delivery order goes out as one basic.ack with the
// multiple flag, one frame and one socket write instead of one each (a
// message still running before them keeps the later ones single, since a
// multiple ack would settle it too; a reject or nack is sent at once).
// Stopping a consumer sends what waits before its channel closes; a
// channel that drops loses what waited, like acks in flight on the wire,
// and the broker delivers those messages again. ack_delay=0 sends every
// acknowledgement at once. Attempt comes from the broker, and what it
// tells depends on the queue type:
//
//   - Quorum queues count deliveries, so Attempt is exact across
//     redeliveries by the broker, whatever brought the message back (a
//     dead channel or connection, a consumer's shutdown, a crash): it is
//     the count + 1, from x-delivery-count, or on RabbitMQ 4.3 and later
//     from x-acquired-count (4.3 counts only failed deliveries in
//     x-delivery-count).
//   - Classic queues keep no count, only a redelivered flag: Attempt is 1
//     on the first delivery and 2 on every redelivery by the broker, the
//     tenth as the second. AMQP cannot change a message's headers when it
//     returns it to a queue, so no header of our own can count either.
//
// On both, in-process retries by the portable consumer count up exactly
// from the delivered Attempt. So on classic queues a message that crashes
// its consumer every time is seen at Attempt 2 forever, and retry budgets
// or dead-lettering by Attempt never end the loop: use quorum queues
// (with delivery_limit) where the attempt count matters.
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
// exponential backoff (reconnect_backoff to max_reconnect_backoff, with
// jitter), the topology declared again, and consuming resumes. A Produce
// in progress or started during the outage waits, bounded by its context
// and by reconnect_timeout (default 5s), and publishes every message not
// yet confirmed again on the new connection: it returns nil only when all
// are confirmed, so some may arrive twice (at-least-once), never not at
// all. When the broker stays unreachable it fails with an error wrapping
// mq.ErrUnavailable; while an outage lasts longer than reconnect_timeout,
// a Produce makes one attempt and fails at once. Subscribe and Dial fail
// the same way; a running consumer keeps reconnecting.
//
// The broker requeues every unacknowledged delivery of a channel that
// closes, and may hand it to another member at once. So a delivery's Lost
// channel (see mq.Delivery) is one per AMQP channel, closed as soon as the
// subscription learns the channel closed (the broker or the network closed
// it or its connection, the broker cancelled the consumer) or before the
// subscription closes it itself (a recycle after a pause, Close): the
// portable consumer then cancels the contexts of the handlers running
// those deliveries and never acknowledges them. A network failure that
// goes unnoticed is learned only at the heartbeat timeout (heartbeat in
// the URL), possibly after the broker's own.
//
// # Clusters
//
// List every node of a cluster in the URL, separated by commas, and use
// quorum queues:
//
//	amqp://user:pass@rabbit-1:5672,rabbit-2:5672,rabbit-3:5672/vhost?queue_type=quorum
//
// (one set of credentials, vhost and parameters for all; IPv6 literals in
// brackets, [::1]:5672). amqp091-go dials one host; this package tries the
// nodes in turn on every connection attempt, the first one and each
// reconnection, and the first that answers wins. An attempt starts with
// the node that the connection's last successful dial reached, or with
// the one after it when that is the node whose connection was just lost,
// so a dead node is tried last. A node that accepts TCP connections but
// does not answer (hung, paused) holds an attempt for at most
// connection_timeout (5s by default when the URL names several nodes) or
// an equal share of what is left of reconnect_timeout, so the others get
// their turn. Dial, Produce and Subscribe fail, with an error wrapping
// mq.ErrUnavailable that names each node and its failure (never the
// password), only when no node answers. The log says which node a
// connection moved to ("rabbit: reconnected", node=...).
//
// A classic queue lives on one node: while that node is down its group
// neither receives nor subscribes, and its messages are lost with the
// node's disk. A quorum queue (queue_type=quorum) is replicated (Raft) on
// several nodes, by default every node of a small cluster, and goes on
// serving on a new leader as long as a majority of its members are up.
// Its publisher confirm means a majority of the members have written the
// message to disk: a Produce that returned nil survives the loss of a
// minority of the nodes (one of three). Exchanges and bindings are
// cluster-wide, and the unrouted queue and the due queue of delayed
// delivery ("<topic>.mq-delay.due") are of the groups' queue type (a due
// queue made classic by an earlier version stays so: while its node is
// down, due messages wait in the quorum level queues and arrive late;
// delete it while no relay runs to have it made again). When the node a consumer is
// connected to fails, the messages it held go to another consumer
// (at-least-once: some arrive twice). They may come back out of order:
// in one of four test runs where the queue's leader hung for 15s, 246 of
// 4,180 messages were handled after a later message of their key
// (RabbitMQ 3.10; the likely cause, not yet confirmed, is the order in
// which the broker hands a cut-off consumer's unacknowledged messages
// back). Where that matters, a version or sequence check in the handler
// keeps the state right.
//
// A node that hangs (frozen, cut off) rather than dies takes longer: the
// client notices it at its heartbeat timeout (heartbeat, in seconds, in
// the URL: three missed heartbeats), and the other nodes only at their
// net_ticktime (RabbitMQ's default 60s); until they count it down, what
// needs every node's agreement waits for it, among which the declarations
// of exchanges, queues and bindings that a reconnecting client makes, so
// producing and consuming through the other nodes stall for about
// net_ticktime. Lower net_ticktime on the nodes to shorten that,
// and run them with cluster_partition_handling = pause_minority, so that
// a node that was cut off stops serving and rejoins by itself.
//
// Measured on a 3-node RabbitMQ 3.10 cluster on one 2-core machine
// (TestRabbitMQClusterFaults in integration/cluster: a producer and a
// consumer group under steady load, heartbeat=2, net_ticktime=10): with the
// quorum queue's leader SIGKILLed, the consumer's node stopped, the
// consumer's node paused for 15s and the leader paused for 15s, no
// confirmed message was lost (a few arrived twice); producing and
// consuming stalled 0.1-0.5s when a node died or stopped, and 11-18s when
// one hung (10s of net_ticktime, then the topology declarations of the
// reconnection).
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
// closing (Consume returned, Close not called) keeps its shards.
//
// When a channel dies the broker hands its unacknowledged messages to
// another instance at once, at about the moment the old one learns it and
// cancels their handlers' contexts; the new one holds back the first
// message it gets redelivered on a shard for 250ms, so handlers that
// return when their context is cancelled are done before it starts. A
// handler that ignores its context, or an instance that learns of the
// failure only at its heartbeat timeout, can still run a key while the
// other instance does; and around failures a key's messages can be
// handled twice (at-least-once). Make side effects idempotent by message
// ID.
//
// # Delayed delivery
//
// Conn implements mq.Scheduler without the delayed-message plugin: a
// message produced with DeliverAt in the future waits in broker queues
// with a queue-wide TTL (x-message-ttl), each queue holding one delay, so
// that every queue expires in the order it was filled and a long delay
// never holds back a shorter one (per-message TTLs expire only at the
// head of a queue). The delay, rounded up to a step of 128ms (never
// down: a message is up to 128ms late from this alone), is written in
// base 32: level k has an exchange "<topic>.mq-delay.level-<k>" and up to
// 31 queues "<topic>.mq-delay.<TTL in ms>" waiting d·32^k steps (d =
// 1-31; 128ms to 3.968s at level 0, 4.096s to 2m7s at level 1, and so
// on up to 48 days at level 4). The message's routing key is its digits;
// each level's exchange routes it to the queue of its digit there (or on to the level
// below for a 0), and each queue dead-letters it when its TTL ends to the
// level below, then to the exchange and classic queue
// "<topic>.mq-delay.due". So the broker moves it down the levels itself,
// one queue per non-zero digit (one for a delay under 4s, one or two
// under 2 minutes, at most three under 70 minutes).
// The level queues are quorum queues with at-least-once dead-lettering
// (x-dead-letter-strategy, RabbitMQ 3.10 and later): the broker keeps a
// message until the next queue confirmed it, so a broker restart or crash
// loses no waiting message. (A broker that refuses quorum queues with a
// TTL gets classic ones, logged once; their dead-lettering is
// at-most-once, so a crash can lose messages between levels.) Produce
// declares the queues a delay needs on first use and returns after the
// broker confirmed every message, as for Send. A delay longer than all the
// levels (49.7 days) goes round them again.
//
// What moves due messages into the topic is the relay that each
// connection runs for each topic it subscribes to, from the first
// subscription of the topic to the last one's Close (Conn.Close waits for
// it). It consumes the due queue, a single-active-consumer queue, so of
// all the instances subscribed one moves at a time, in the order the
// messages became due (to within a step), and another takes over when it
// leaves. It checks mq-deliver-at against its
// own clock (a message still early goes back into the levels, so none is
// delivered early), then publishes the message to the topic as Send does:
// the topic's exchange, the routing key of its key, its ID, properties
// and headers (without the x-death headers dead-lettering added), the
// time it moves as its timestamp. It keeps up to confirm_window copies
// unconfirmed and acknowledges the due messages whose copies the broker
// confirmed many at a time. A relay cut off between a confirm and its
// acknowledgement leaves the message to be moved again: it then arrives
// twice, with the same ID. While no connection subscribes to a topic, its
// due messages wait in the due queue and arrive late. A relay runs, and
// the due exchange and queue exist, for every topic subscribed to, whether
// it has delayed messages or not: each relay holds a channel on each of
// the connection's two AMQP connections.
//
// Each queue a message waits in costs the broker a quorum-queue write and
// a dead-lettering, and the relay's move a classic-queue write, a
// delivery and a publish: a delayed message costs the broker several
// times what a sent one does, which bounds their rate. Measured on one
// RabbitMQ 3.10 node sharing 2 cores with other work (mq bench-delay):
// 100,000 messages due 1s to 61s after they were scheduled, all within
// 10-15s, arrived 125-160ms late at the median and 0.9-2.8s at the 99th
// percentile (max 1.4-3.5s), none early, none lost, the spread following
// how much of the CPU the machine's other work left the broker; 30,000 due
// over 20s, 85-290ms and 0.2-1.2s. (With the 64ms steps in base 16 this
// package used before, three hops for most of these delays, the 100,000
// arrived 1-1.8s late at the median and 6.8-10.5s at the 99th percentile
// in the same conditions.) With less spare CPU the broker falls behind
// and messages arrive later, in due order. A relay alone, its due queue
// filled, moved 5,000-6,800 messages a second (8,000 with
// confirm_window=1024); 500 messages waiting through a broker restart all
// arrived. Idle level queues cost the broker CPU too: a topic has up to
// about 60 for delays under 2 minutes, and 250 took 40% of a core here.
//
// Client.Scheduled (Conn.Scheduled) counts the messages ready in the
// topic's level and due queues, with passive queue.declare calls (one per
// queue that may exist, up to about 150); messages the broker is
// handing from one level to the next, or the relay is moving, are not
// counted. NextDue is always zero: the broker does not tell when a
// queue's messages expire. Group names starting with "mq-delay." are
// reserved. With declare=false the delay exchanges and queues must exist
// (declared by a connection that may): Produce of a delayed message fails
// with an error wrapping ErrNotFound, and a subscription moves the
// topic's due messages once their queue exists.
//
// # Other methods
//
// Conn.Lag returns the messages waiting for a group (an error wrapping
// mq.ErrUnknownGroup for a group without queues), Conn.Backlog the same
// split into the group's queues and the unrouted queue, Conn.PartitionLag
// (mq.Lagger, through Client.Lag) one entry per queue, Conn.QueueNames
// the queues' names, and Conn.DeleteGroup (mq.GroupDeleter, through
// Client.DeleteGroup) deletes a group's queues, refusing with
// mq.ErrGroupActive while they have consumers. Conn.Ping implements
// mq.Pinger. Reach the Conn of an
// mq.Client with client.Conn().(*rabbit.Conn).
package rabbit
