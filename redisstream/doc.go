// Package redisstream is the Redis Streams backend of package mq, on
// github.com/redis/go-redis/v9. Importing it registers the URL schemes
// below with mq.Open:
//
//	import _ "github.com/mqkit/mq/redisstream"
//
//	c, err := mq.Open(ctx, "redis://:PASSWORD@127.0.0.1:6379/0?claim_idle=10s")
//
// A topic is a stream and an mq consumer group is a Redis consumer group.
// Produce is XADD (pipelined: one round trip for many messages, returning
// after every reply); consuming is XREADGROUP, XACK (batched) after the
// handler succeeded, and XAUTOCLAIM of entries a crashed consumer left pending.
//
// # URLs
//
//	redis://[USER:PASSWORD@]HOST[:PORT][/DB][?PARAMS]          one server (port 6379, DB 0 by default)
//	rediss://...                                              the same over TLS
//	redis+cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT[?PARAMS]   Redis Cluster seed nodes
//	rediss+cluster://...                                      Redis Cluster over TLS
//	redis+sentinel://[USER:PASSWORD@]HOST:PORT,HOST:PORT[/DB]?master=NAME[&PARAMS]
//	rediss+sentinel://...                                     Sentinel-managed primary (over TLS)
//
// Addresses are comma-separated in the host part; give every address a
// port, or none (then 6379, or 26379 for sentinels). The user information
// authenticates to the Redis servers; for Sentinel, sentinel_auth=true uses
// it for the sentinels too. Credentials are accepted only in the user
// information, which errors and logs never show: the go-redis parameters
// password, username, sentinel_password and sentinel_username are
// rejected, as are addr (list addresses in the host part) and master_name
// (use master). For anything a URL cannot say (a different sentinel
// password, say), build a go-redis client yourself and use NewConn.
//
// Parameters of this package (besides the portable ones of mq.Open):
//
//	claim_idle=DUR   idle time before a dead consumer's entries are claimed (default 30s)
//	block=DUR        longest single XREADGROUP wait (default 2s)
//	maxlen=N         trim streams to about N entries on XADD (MAXLEN ~ N)
//	max_age=DUR      trim entries older than DUR on XADD (MINID ~ now-DUR)
//	shards=N         spread each topic over N streams by key (see Sharding)
//	shard_lease=DUR  shard lease time (default 10s)
//	start=earliest   a new group starts at the beginning of the stream (default)
//	start=latest     a new group starts with entries added after it
//	wait_replicas=N  Produce returns after N replicas acknowledged the writes (WAIT; default 0: off)
//	wait_timeout=DUR how long each WAIT waits (default 1s; see Clusters and replication)
//	master=NAME      the Sentinel master name (redis+sentinel only)
//	sentinel_auth=true  authenticate to the sentinels with the user information
//	tls_ca=FILE      PEM file of CAs to trust (rediss schemes)
//	tls_cert=FILE, tls_key=FILE  client certificate (rediss schemes)
//	tls_server_name=NAME  name to verify in the server certificate
//
// All other parameters go to go-redis's own URL parser (redis.ParseURL,
// ParseClusterURL, ParseFailoverURL): dial_timeout, read_timeout,
// write_timeout, pool_size, min_idle_conns, max_retries, protocol,
// client_name, skip_verify and the others it documents. Unknown
// parameters fail Open with an error wrapping mq.ErrInvalidURL.
//
// # Wire format
//
// Each message is one stream entry with these fields, so that programs in
// any language can produce and consume alongside the SDK:
//
//	id      the message ID (always present, and first, when the SDK produced it)
//	key     the message key (absent when empty)
//	h:NAME  one field per header NAME, holding its value
//	body    the body (absent when empty)
//
// Field names and values are binary-safe Redis strings. The entry ID's
// time is the message's Timestamp.
//
// An entry is in this encoding when it has a non-empty id field and no
// field other than id, key, body and h:NAME; it is then read exactly, and
// its id is the message ID, which deduplication trusts: a program that
// writes entries of this shape must give each message an ID of its own
// (a UUID, say). Any other entry is foreign, written by a program that
// does not know the SDK, and is read without dropping anything:
//
//   - its message ID is the stream entry ID ("1700000000000-0"), unique in
//     the stream and stable across redeliveries; on a sharded topic it is
//     prefixed with the stream key ("{orders}:3/1700000000000-0"), as two
//     shards may hold entries with one entry ID;
//   - key and h:NAME fields are the key and headers, as above;
//   - the body is the body field; without one, it is the value of the
//     entry's only plain field (any field but id, key and h:*), as in
//     XADD orders '*' payload '{"order":7}', with the header
//     HeaderBodyFrom set to "field:payload"; with several plain fields, a
//     JSON object of them (names to values, invalid UTF-8 replaced), with
//     HeaderBodyFrom set to "json"; with none, the body is empty;
//   - plain fields other than the one that became the body, id included,
//     become headers of the same name (a header from an h: field wins over
//     a plain field of the same name), so `redis-cli XADD orders '*' body
//     hello source cli` arrives with body "hello" and header source=cli,
//     and an application's own id field is the header id, not the message
//     ID: two entries with id 42 are two messages;
//   - if a field appears twice in one entry, the last one is used.
//
// Every entry is therefore delivered; none is skipped as malformed.
//
// # Delivery
//
// Subscribe creates the group with XGROUP CREATE ... MKSTREAM (an existing
// group is kept). A new group starts at the beginning of the stream
// ("0"), so it gets every entry the stream still holds, including entries
// produced before it existed; start=latest ("$") gives only later ones.
// Each subscription has its own consumer name, HOSTNAME-PID-RANDOM.
//
// Receive reads new entries with XREADGROUP ... BLOCK (interrupted with
// CLIENT UNBLOCK on a dedicated connection when the consumer stops, so
// stopping never waits for the block time), and every ClaimIdle/2 first
// claims entries of the group that have been idle for ClaimIdle with
// XAUTOCLAIM; claimed entries are delivered before new ones, and within
// one stream entries come in stream order. Attempt is the entry's delivery
// count in the group: 1 for a new entry, the XPENDING count for a claimed
// one.
//
// Every command that moves entries into the consumer's pending list runs
// on that dedicated connection, where go-redis never retries it, so a
// command whose reply was lost (Redis restarting, a dropped connection)
// always fails visibly. After such a failure, and at the start, Receive
// reads the consumer's own pending history (XREADGROUP ... 0, paging, the
// entries it already holds skipped) before any new entry, so the entries
// Redis handed out while the reply was lost come in stream order, not
// ClaimIdle later behind newer entries of their keys. Redis counts a
// delivery for an entry read this way; Attempt is one less (at least 1),
// as the entry was counted when it was first handed out. (The delivery
// count of an entry held during the outage grows by one too.)
//
// A live subscription resets the idle time of the entries it holds every
// ClaimIdle/3 (XCLAIM to itself, JUSTID, in a script that leaves alone any
// entry another consumer took), so a handler may run longer than
// ClaimIdle without its entry being handled twice.
//
// # Ownership
//
// A subscription gives up the deliveries it may have lost by its own
// clock, without waiting to learn it (mq.Delivery.Lost): the portable
// consumer then cancels their handlers' context, drops those not started,
// and never acknowledges them. Nack of a lost delivery only forgets it.
//
// On an unsharded topic the deliveries made since the last fencing event
// share one Lost channel (a generation). Their entries are the
// subscription's until they could have been idle for ClaimIdle: the time
// taken before sending the last keep-alive that covered them (or, for
// entries delivered since, the command that delivered them), plus
// ClaimIdle, minus a margin of ClaimIdle/5 (at least 10ms). A timer closes
// the channel then unless a keep-alive succeeded meanwhile; a keep-alive
// that finds one of the entries claimed by another consumer closes it at
// once. The subscription stops keeping those entries alive and reads its
// pending history again before new entries: what is still pending for it
// comes back in order, the rest is another member's. So a handler that
// honours its context stops before another member can claim its entry,
// whether Redis or this process stalled; one that ignores it may still
// overlap (the delivery is at least once).
//
// Sharded topics fence by shard lease instead (see Sharding).
//
// Ack is XACK, batched: Ack queues the entry's ID and returns, and a loop
// of the subscription sends every ID queued meanwhile in one XACK per
// stream, so the consumer frees the in-flight slot without waiting for a
// round trip. At-least-once delivery holds: until its XACK is answered an
// entry stays pending, is kept alive as above, and keeps its shard leased,
// and Close sends every queued ack before it hands entries back, releases
// shards or leaves the group. An XACK that fails (logged) or never gets
// sent (the process crashes) means the entry is claimed and delivered
// again, exactly as if the process had crashed just before Ack. When more
// than MaxInFlight acks are queued, Ack waits for their XACK.
//
// Reads fetch as many entries as the consumer's in-flight window has room
// for (SubscribeOptions.MaxInFlight, which counts entries read and not yet
// settled); while handlers keep settling, a read waits until half the
// window is free, so a busy consumer reads in large batches rather than a
// few entries per round trip.
//
// Nack, used when a consumer stops with unfinished messages,
// leaves the entry pending and sets its idle time to ClaimIdle (XCLAIM ...
// IDLE, JUSTID), so the next claim by any member takes it at once with its
// delivery count one higher. Closing a subscription hands back what it
// still holds the same way and removes its consumer name from the group
// only if nothing is pending on it (never XGROUP DELCONSUMER with pending
// entries). A crashed consumer's entries stay pending and are claimed by
// live members after ClaimIdle; its name, once nothing is pending on it
// and it has not been seen for max(10×ClaimIdle, 1h), is deleted by a live
// member (checked every 10 minutes, atomically with the pending check).
//
// Trimming (maxlen, max_age) deletes entries whether or not every group has
// handled them; an entry deleted while pending cannot be delivered again,
// and consumers log a warning when a claim finds such entries.
//
// # Sharding
//
// One stream read by a group spreads a key's messages over its members,
// which may then handle them out of order. With shards=N a topic is N
// streams, "{topic}:0" to "{topic}:N-1", and a message goes to shard
// FNV-1a-32(key) mod N (a message without a key: by its ID). The braces
// are a Redis Cluster hash tag: all shards of a topic live in one slot, so
// one XREADGROUP reads all a member holds. The key "{topic}:shards" records
// N; producers and consumers with another N fail with ErrShardMismatch.
//
// Each shard is read by one member of a group at a time. A member holds a
// shard through a lease key ("{topic}:lease:GROUP:I", holding its consumer
// name, expiring after shard_lease, renewed every third of it, sooner
// after a failed renewal) and takes
// at most ceil(N/members) shards, counting live members in the sorted set
// "{topic}:members:GROUP". A member with more than its share stops reading
// the extra shards, and releases each once everything it read from it is
// settled; a member taking a shard first claims every entry pending in it
// (whoever held it), then reads new ones. Members beyond N hold no shard
// and stand by. A consumer whose Consume stopped
// gives its shards up. New entries of a shard are read by a script that
// checks the lease and reads in one atomic step (the wait for more is a
// plain XREAD, which takes nothing), so a read cannot take entries of a
// shard after its lease passed to another member.
//
// Each acquisition of a shard has its own Lost channel, closed when the
// lease is lost: a renewal finds it held by another member, or no renewal
// succeeded by the member's local deadline, which is the time taken
// before sending the command that set or last renewed the lease, plus
// shard_lease, minus a margin of shard_lease/5 (at least 10ms). Redis
// cannot expire the lease before then, so the member stops reading and
// handling the shard (its handlers' context is cancelled) before any
// other member can take it, whether Redis, the network or the member
// stalled. The channel also closes when the shard is released and when
// the subscription closes. Together with the portable layer's key-ordered
// concurrency inside a consumer, each key's messages are handled in
// produce order, one at a time, across the group, as long as handlers
// honour their context: a handler that ignores the cancellation may still
// run when the shard's next holder starts the key.
//
// # Delayed delivery
//
// Conn implements mq.Scheduler: a message produced with DeliverAt in the
// future waits in Redis, in the topic's schedule, and enters the topic
// when due. It needs no URL parameter. The schedule is two keys in the
// hash slot of the topic's streams, so Redis Cluster runs the move in one
// node: the sorted set "{topic}:delay" (members scored by due time in
// unix milliseconds, rounded up) and the hash "{topic}:delay:msgs" (each
// member's stream entry fields, the wire format above as netstrings
// "LEN:BYTES", headers sorted). For an unsharded topic with a hash tag of
// its own, "orders{eu}" say, the prefix is "{eu}:orders{eu}" instead. A
// member is "SHARD:DUE_NANOSECONDS:DIGEST:ID": the shard is chosen at
// Schedule time from the key, as Send does, and the digest covers shard,
// due time and fields, so scheduling the same message (same ID, key,
// headers, body and DeliverAt) again while it waits, as a retried
// Produce does, stores it once. Schedule writes both keys of up to 500
// messages in one MULTI/EXEC and returns after every EXEC was answered:
// as durable as Send (with appendfsync always, on disk). A waiting
// message holds no consumer memory and no handler slot; it survives a
// Redis restart (with persistence) and a crash of any process.
//
// Due messages are moved by every subscription of the topic: each Conn
// runs one mover per topic it subscribes to, whatever the group, started
// by the first Subscribe and stopped (Close waits for it) when the last
// subscription of the topic on the Conn closes. A mover runs one Lua
// script that takes up to 256 members due by the mover's clock (about 4
// MiB of payload at most, so Redis is never blocked long), XADDs each to
// its stream with the same fields (trimmed by maxlen or max_age like
// Send) and removes it from the schedule, all in one atomic step: any
// number of movers, in any number of processes, never move a message
// twice and never skip one. The moved entry is a normal entry, read
// exactly like a sent one, with its ID, key, headers and body; its entry
// ID's time (the message's Timestamp) is when it was moved, and the
// groups of the topic at that time receive it. The script returns when
// the next member is due; the mover sleeps until then, at most 200ms (so
// members scheduled by other processes are noticed within that), and a
// Schedule on the same Conn of an earlier message wakes it at once.
// Measured on a 2-core test machine (Redis on the same host, appendfsync
// always): one mover moved about 45,000 messages/s; 100,000 messages
// spread over a minute reached a consumer p50 2ms, p99 18ms after they
// were due.
//
// Guarantees and limits: a message is never moved before DeliverAt by
// the clock of the process that moves it (clocks of other hosts that are
// ahead of the producer's make it early by the difference). Nothing
// moves while no subscription of the topic is open on any Conn: messages
// then wait, and are moved when one subscribes (Scheduled shows them).
// A message scheduled twice with different content or due time (an
// application that retries Produce with a new DeliverAfter) is two
// entries with one ID, delivered twice as any duplicate is. A stored
// entry carries the header mq-deliver-at (field h:mq-deliver-at), which
// the SDK's consumer turns back into Message.DeliverAt and removes;
// foreign consumers see it. A delayed message may have at most 3,000
// headers (the script passes its fields to XADD in one Lua call).
// Members of the schedule that this SDK did not write (no payload, a
// payload that does not parse, no id field) are moved, when due, to the
// hash "{topic}:delay:aside" (member to payload) and logged as a
// warning, so they never block the messages behind them. An XADD that
// fails (the stream key holds another type, Redis is out of memory)
// leaves its message and the rest scheduled, and the mover retries with
// a backoff, logging each failure. On Redis Cluster an unsharded topic
// whose name has a '}' but no hash tag, or a sharded one whose name
// starts with '}', cannot have its schedule in its streams' slot:
// Produce of a delayed message to it fails with an error wrapping
// mq.ErrDelayUnsupported.
//
// Scheduled reports ZCARD of the schedule as Waiting and the due time of
// its first member as NextDue (both exact; members to be set aside count
// until a mover set them aside).
//
// # Errors
//
// Errors of a Redis that cannot be reached or is not serving wrap
// mq.ErrUnavailable (and the go-redis error): refused, reset or dropped
// connections, network timeouts, the connection pool timing out, and the
// replies LOADING, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, READONLY (after a
// failover), BUSY and NOREPLICAS. A client closed by Close, or by the
// caller who gave it to NewConn, is mq.ErrClosed.
//
// # Deployments
//
// A single server, a Sentinel-managed primary (redis+sentinel) and Redis
// Cluster (redis+cluster) are supported; a topic's streams are one slot,
// so all commands of a subscription go to one node. The commands used
// need Redis 6.2 (XAUTOCLAIM); Redis 7 is recommended.
//
// # Clusters and replication
//
// Redis replicates asynchronously: a primary answers an XADD once the
// entry is in its own memory (and, with appendfsync always, on its disk)
// and sends it to its replicas afterwards. When a replica is promoted
// (Redis Cluster after cluster-node-timeout, Sentinel after
// down-after-milliseconds, or a SENTINEL FAILOVER), what it had not
// received is gone, although Produce returned nil for it, and the old
// primary drops it too when it comes back as a replica. A Sentinel
// failover adds a window of its own: the old primary keeps accepting
// writes until the sentinels reconfigure it, and a client that has not
// switched yet writes there. The fault tests of integration/cluster
// measure this: in one run a SENTINEL FAILOVER under steady load lost 9
// of 20,770 confirmed messages (another run lost none); killing a
// primary lost none in our runs, its replica on the same host being
// close behind, which is luck, not a guarantee.
//
// wait_replicas=N (Config.WaitReplicas) closes most of that gap: every
// pipeline of XADDs of a Send, and every MULTI/EXEC of a Schedule, is
// followed on the same connection by WAIT N wait_timeout, which
// returns once N replicas acknowledged every write the connection made
// before it; Produce returns nil only then. With fewer acknowledgements
// by wait_timeout, Produce fails with an error wrapping ErrNotReplicated
// and mq.ErrUnavailable: the entries may be in the stream all the same,
// so retry with the same message IDs (a retried message may then be
// delivered twice: deduplicate on the consumer side, as at-least-once
// delivery asks anyway). With wait_replicas=1 the fault tests lost
// nothing in any fault. WAIT is not a strong guarantee, as the Redis
// documentation says: with several replicas a failover may promote one
// that did not acknowledge the write (Sentinel and Cluster prefer the
// most up-to-date one, but during a network partition they may not know
// which it is), and a replica acknowledges what it received, which
// survives its own crash only as its appendfsync setting says: run
// replicas with appendonly yes and appendfsync always too. N must not
// exceed the replicas that stay up: with one replica per primary,
// wait_replicas=1 stops confirming writes from a failover until the old
// primary is back as a replica of the new one (a Sentinel reconfigures a
// returning primary within 10 to 20 seconds, during which Produce
// fails), so run two replicas per primary to keep producing through the
// loss of a node.
//
// The cost is one WAIT per Produce call, not per message: the replica
// must receive the writes, persist them and acknowledge them. Measured
// with BenchmarkProduceReplicated on the 2-core test machine (primaries
// and replicas on one host, appendfsync always on all, 1 KiB messages,
// calls alternating between a client with and one without
// wait_replicas=1, medians of three runs): one message per call, about
// 2,200 messages/s became 1,050 on Sentinel (0.49x) and 1,200 on Redis
// Cluster (0.53x), each call waiting about 0.45 ms more; 100 messages
// per call, about 24,000 messages/s became 20,000 (0.82x Sentinel,
// 0.88x Cluster). Between hosts, add the round trip from primary to
// replica to every call.
//
// On Redis Cluster, WAIT counts the replicas of the node it runs on, so
// Send routes by hand: it groups the messages by the primary of their
// stream's slot (one group for a topic, whose streams share a hash slot)
// and sends each group's XADDs and the WAIT in one pipeline on that
// node's connection. A MOVED reply (after a failover or a finished slot
// migration) reloads the cluster layout and sends the redirected
// messages, only those, to the node named; an ASK reply (the slot is
// being migrated and the stream is on the importing node) sends them
// there after ASKING. After five rounds of redirections Send fails as
// unavailable. Consumers follow the same redirections on their own
// connections.
//
// wait_replicas does not cover the delayed-delivery mover, and need not:
// its script removes due messages from the schedule and adds them to the
// streams in one atomic step, which replicas receive as one transaction,
// so a failover that loses a move loses it whole, the messages are
// still scheduled on the new primary, and a mover moves them again
// (nothing is lost; a message may be delivered twice). Nor does it cover
// the consumer's commands (a lost XACK or read means a redelivery, not a
// loss) or a slot migration itself (MIGRATE copies a stream to the
// importing node, which replicates it asynchronously like any write).
//
// # Groups and health
//
// Conn implements mq.Pinger (PING), mq.Lagger and mq.GroupDeleter, for
// mq.Client's Ping, Lag and DeleteGroup. Lag reports per stream of the
// topic the group's entries not yet delivered (XINFO GROUPS lag, which
// needs Redis 7; -1 otherwise), its pending entries and the age of the
// oldest of either; Conn.Lag sums the first two. DeleteGroup destroys the
// group on every stream (and, sharded, its lease keys and members set),
// and refuses with mq.ErrGroupActive while a consumer of the group was
// seen within claim_idle (unless every entry pending on it was handed
// back, as a closed subscription leaves them), or a shard lease or
// membership of the group is alive. Both read the
// topic's layout from Redis, so they need no shards= parameter. A group
// Redis does not know is mq.ErrUnknownGroup.
package redisstream
