// Package wire is what package outbox and package outbox/pgxoutbox share:
// how a message becomes an outbox row (the SQL, the partition, the lock
// key, the header encoding) and back.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/mqkit/mq"
)

// Partitions is how many partitions rows are spread over by key. A relay
// works on a partition only while it holds the partition's advisory lock,
// so it is also the most relays (or relay workers) that publish at once.
// It is written into every row: changing it reorders keys in flight.
const Partitions = 64

// maxRowsPerInsert keeps an INSERT under PostgreSQL's 65535 parameters.
const maxRowsPerInsert = 1000

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,50}$`)

// ValidTable reports an error for a table name that is not a lower-case
// SQL identifier of at most 51 bytes (so that the names derived from it
// stay under PostgreSQL's 63).
func ValidTable(table string) error {
	if !identRE.MatchString(table) {
		return fmt.Errorf("outbox: table name %q must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 51 bytes; put it in a schema with search_path)", table)
	}
	return nil
}

// Stmt is one SQL statement with its arguments.
type Stmt struct {
	SQL  string
	Args []any
}

// KeyHash is the 64-bit hash of a message's (table, topic, key): the
// advisory lock a writer takes for the key, and the source of its
// partition.
func KeyHash(table, topic, key string) int64 {
	h := fnv.New64a()
	h.Write([]byte(table))
	h.Write([]byte{0})
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return int64(h.Sum64())
}

// Partition maps a key hash to a partition.
func Partition(h int64) int { return int(uint64(h) % Partitions) }

// Build assigns IDs to msgs that have none and returns the statements
// that add them to table inside the caller's transaction: first one that
// takes the advisory transaction lock of every distinct non-empty key, in
// ascending order (so that two writers never wait on each other in a
// cycle through one call), then the inserts. Messages with an empty key
// take no lock and are spread over partitions by ID.
func Build(table, topic string, msgs []*mq.Message) ([]Stmt, error) {
	if topic == "" {
		return nil, fmt.Errorf("outbox: add: %w: empty topic name", mq.ErrInvalidMessage)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	locks := map[int64]bool{}
	type row struct {
		m    *mq.Message
		part int
	}
	rows := make([]row, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return nil, fmt.Errorf("outbox: add: %w: message %d of %d is nil", mq.ErrInvalidMessage, i+1, len(msgs))
		}
		if m.ID == "" {
			m.ID = mq.NewID()
		} else if strings.IndexByte(m.ID, 0) >= 0 {
			return nil, fmt.Errorf("outbox: add: %w: message ID %q holds a NUL byte", mq.ErrInvalidMessage, m.ID)
		}
		var h int64
		if m.Key != "" {
			h = KeyHash(table, topic, m.Key)
			locks[h] = true
		} else {
			h = KeyHash(table, topic+"\x00id", m.ID)
		}
		rows[i] = row{m: m, part: Partition(h)}
	}
	var stmts []Stmt
	if len(locks) > 0 {
		keys := slices.Sorted(maps.Keys(locks))
		var b strings.Builder
		b.WriteString("SELECT pg_advisory_xact_lock(x) FROM (VALUES ")
		args := make([]any, len(keys))
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "($%d::bigint)", i+1)
			args[i] = k
		}
		b.WriteString(") AS v(x)")
		stmts = append(stmts, Stmt{SQL: b.String(), Args: args})
	}
	for start := 0; start < len(rows); start += maxRowsPerInsert {
		chunk := rows[start:min(start+maxRowsPerInsert, len(rows))]
		var b strings.Builder
		b.WriteString("INSERT INTO ")
		b.WriteString(table)
		b.WriteString(" (id, topic, key, headers, body, part) VALUES ")
		args := make([]any, 0, 6*len(chunk))
		for i, r := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			n := 6 * i
			fmt.Fprintf(&b, "($%d, $%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5, n+6)
			body := r.m.Body
			if body == nil {
				body = []byte{}
			}
			args = append(args, r.m.ID, topic, []byte(r.m.Key), EncodeHeaders(r.m.Headers), body, int64(r.part))
		}
		stmts = append(stmts, Stmt{SQL: b.String(), Args: args})
	}
	return stmts, nil
}

// EncodeHeaders encodes headers for the headers column (bytea), sorted by
// name: for each, the uvarint length of the name, the name, the uvarint
// length of the value, the value. No headers encode as nil (SQL NULL).
// Names and values may hold any bytes.
func EncodeHeaders(h map[string]string) []byte {
	if len(h) == 0 {
		return nil
	}
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(h)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		v := h[k]
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// DecodeHeaders reverses EncodeHeaders.
func DecodeHeaders(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	h := map[string]string{}
	for len(b) > 0 {
		var kv [2]string
		for i := range kv {
			n, w := binary.Uvarint(b)
			if w <= 0 || uint64(len(b)-w) < n {
				return nil, errors.New("outbox: malformed headers column")
			}
			kv[i] = string(b[w : w+int(n)])
			b = b[w+int(n):]
		}
		h[kv[0]] = kv[1]
	}
	return h, nil
}

// IntList formats ns for an SQL IN list: "1, 2, 3".
func IntList[T int | int64](ns []T) string {
	var b strings.Builder
	for i, n := range ns {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatInt(int64(n), 10))
	}
	return b.String()
}
