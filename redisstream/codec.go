package redisstream

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// Stream entry field names of the wire format (see the package
// documentation).
const (
	FieldID      = "id"   // the message ID
	FieldKey     = "key"  // the message key, absent when empty
	FieldBody    = "body" // the message body, absent when empty
	HeaderPrefix = "h:"   // a header: field "h:NAME" holds the value of header NAME
)

// HeaderBodyFrom is the header a consumer sets on a message decoded from
// a foreign entry (one not in the SDK's encoding: see the package
// documentation) that has no body field but other plain fields, to say
// where its Body came from: "field:NAME" when Body is the value of the
// entry's one plain field NAME (as in XADD orders '*' payload '{...}'),
// "json" when Body is a JSON object of the entry's several plain fields
// (which are also headers, byte for byte).
const HeaderBodyFrom = "mq-redis-body-from"

// encode returns the XADD field-value pairs of m.
func encode(m *mq.Message) []any {
	v := make([]any, 0, 6+2*len(m.Headers))
	v = append(v, FieldID, m.ID)
	if m.Key != "" {
		v = append(v, FieldKey, m.Key)
	}
	for k, hv := range m.Headers {
		v = append(v, HeaderPrefix+k, hv)
	}
	if len(m.Body) > 0 {
		v = append(v, FieldBody, m.Body)
	}
	return v
}

func encodedSize(m *mq.Message) int {
	n := len(FieldID) + len(m.ID) + len(FieldKey) + len(m.Key) + len(FieldBody) + len(m.Body)
	for k, v := range m.Headers {
		n += len(HeaderPrefix) + len(k) + len(v)
	}
	return n
}

// native reports whether an entry is in the SDK's encoding: it has a
// non-empty id field and no field other than id, key, body and h:NAME.
func native(values map[string]any) bool {
	id, _ := values[FieldID].(string)
	if id == "" {
		return false
	}
	for f := range values {
		if f != FieldID && f != FieldKey && f != FieldBody && !strings.HasPrefix(f, HeaderPrefix) {
			return false
		}
	}
	return true
}

// decode turns an entry of stream, one of topic's streams, into a
// message. An entry in the SDK's encoding (see native) decodes exactly;
// any other is a foreign entry, mapped as the package documentation says:
// its ID is the entry's own (prefixed with the stream key on a sharded
// topic, whose streams' entry IDs may coincide), an id field is a header,
// and its body is the body field or else made of its plain fields.
func decode(topic, stream string, x redis.XMessage) *mq.Message {
	m := &mq.Message{Topic: topic, Attempt: 1, Timestamp: entryTime(x.ID)}
	if native(x.Values) {
		for f, raw := range x.Values {
			s := str(raw)
			switch {
			case f == FieldID:
				m.ID = s
			case f == FieldKey:
				m.Key = s
			case f == FieldBody:
				m.Body = []byte(s)
			default:
				m.SetHeader(f[len(HeaderPrefix):], s)
			}
		}
		return m
	}
	m.ID = x.ID
	if stream != topic {
		m.ID = stream + "/" + x.ID
	}
	var plain map[string]string
	hasBody := false
	for f, raw := range x.Values {
		s := str(raw)
		switch {
		case f == FieldKey:
			m.Key = s
		case f == FieldBody:
			m.Body, hasBody = []byte(s), true
		case strings.HasPrefix(f, HeaderPrefix):
			m.SetHeader(f[len(HeaderPrefix):], s)
		default:
			if plain == nil {
				plain = map[string]string{}
			}
			plain[f] = s
		}
	}
	// The body candidates: the plain fields other than id, which is the
	// producer's name for the message, not its content.
	var only string
	n := 0
	for f := range plain {
		if f != FieldID {
			only = f
			n++
		}
	}
	switch {
	case hasBody || n == 0:
	case n == 1:
		m.Body = []byte(plain[only])
		delete(plain, only)
		m.SetHeader(HeaderBodyFrom, "field:"+only)
	default:
		obj := make(map[string]string, n)
		for f, s := range plain {
			if f != FieldID {
				obj[f] = s
			}
		}
		m.Body, _ = json.Marshal(obj) // a map of strings always marshals
		m.SetHeader(HeaderBodyFrom, "json")
	}
	for f, s := range plain {
		if _, dup := m.Headers[f]; !dup {
			m.SetHeader(f, s)
		}
	}
	return m
}

// str returns a field value as a string (go-redis returns strings; this
// covers anything else a script might return).
func str(raw any) string {
	if s, ok := raw.(string); ok {
		return s
	}
	return fmt.Sprint(raw)
}

// entryTime returns the time in a stream entry ID ("ms-seq"), or now for an
// ID that holds none.
func entryTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return time.Now()
	}
	return time.UnixMilli(n)
}
