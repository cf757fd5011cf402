package rabbit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
)

// Headers that carry the AMQP basic properties other than message-id and
// timestamp (which are mq.Message.ID and Timestamp). A delivered message
// has one for each property its publisher set (priority when above 0).
// On Produce, the headers marked "property" below are sent as the
// property, not in the headers table, so a message read from a foreign
// publisher and produced again keeps them; the others stay headers.
const (
	// HeaderContentType carries content-type (property).
	HeaderContentType = "amqp-content-type"
	// HeaderContentEncoding carries content-encoding (property).
	HeaderContentEncoding = "amqp-content-encoding"
	// HeaderCorrelationID carries correlation-id (property).
	HeaderCorrelationID = "amqp-correlation-id"
	// HeaderReplyTo carries reply-to (property).
	HeaderReplyTo = "amqp-reply-to"
	// HeaderType carries type (property).
	HeaderType = "amqp-type"
	// HeaderAppID carries app-id (property).
	HeaderAppID = "amqp-app-id"
	// HeaderPriority carries priority, 0 to 255 in decimal (property).
	// Produce rejects another value with mq.ErrInvalidMessage.
	HeaderPriority = "amqp-priority"
	// HeaderUserID carries user-id. Produce sends it as a header only:
	// RabbitMQ refuses a user-id property that is not the publishing
	// connection's user.
	HeaderUserID = "amqp-user-id"
	// HeaderExpiration carries expiration (a per-message TTL in
	// milliseconds). Produce sends it as a header only: a message
	// produced through mqkit never expires in a queue, and a failed
	// message forwarded to a dead-letter topic is not dropped by a TTL
	// its first publisher chose.
	HeaderExpiration = "amqp-expiration"
)

// propertyHeaders is how the delivered properties become headers.
var propertyHeaders = []struct {
	name string
	get  func(*amqp.Delivery) string
}{
	{HeaderContentType, func(d *amqp.Delivery) string { return d.ContentType }},
	{HeaderContentEncoding, func(d *amqp.Delivery) string { return d.ContentEncoding }},
	{HeaderCorrelationID, func(d *amqp.Delivery) string { return d.CorrelationId }},
	{HeaderReplyTo, func(d *amqp.Delivery) string { return d.ReplyTo }},
	{HeaderType, func(d *amqp.Delivery) string { return d.Type }},
	{HeaderAppID, func(d *amqp.Delivery) string { return d.AppId }},
	{HeaderUserID, func(d *amqp.Delivery) string { return d.UserId }},
	{HeaderExpiration, func(d *amqp.Delivery) string { return d.Expiration }},
	{HeaderPriority, func(d *amqp.Delivery) string {
		if d.Priority == 0 {
			return ""
		}
		return strconv.Itoa(int(d.Priority))
	}},
}

// propsToHeaders sets m's headers for the properties of d. A property
// wins over a table header of the same name.
func propsToHeaders(d *amqp.Delivery, m *mq.Message) {
	for _, p := range propertyHeaders {
		if v := p.get(d); v != "" {
			m.SetHeader(p.name, v)
		}
	}
}

// setProperty sets the property that header name carries on p and
// reports whether name is one that Produce sends as a property.
func setProperty(p *amqp.Publishing, name, v string) (bool, error) {
	switch name {
	case HeaderContentType:
		p.ContentType = v
	case HeaderContentEncoding:
		p.ContentEncoding = v
	case HeaderCorrelationID:
		p.CorrelationId = v
	case HeaderReplyTo:
		p.ReplyTo = v
	case HeaderType:
		p.Type = v
	case HeaderAppID:
		p.AppId = v
	case HeaderPriority:
		n, err := strconv.ParseUint(v, 10, 8)
		if err != nil {
			return true, fmt.Errorf("header %s=%q: want a whole number from 0 to 255", name, v)
		}
		p.Priority = uint8(n)
	default:
		return false, nil
	}
	if len(v) > 255 {
		return true, fmt.Errorf("header %s is %d bytes; AMQP's short string holds 255", name, len(v))
	}
	return true, nil
}

// headerText returns the text form of an AMQP field value (see the
// package documentation, "Headers"): strings and byte arrays as they
// are, integers, floats and decimals in decimal, booleans as true or
// false, timestamps in RFC 3339 (UTC), void as "", and arrays and tables
// as JSON. It reports false for a type the AMQP codec never produces.
func headerText(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", true
	case string:
		return x, true
	case []byte:
		return string(x), true
	case bool:
		return strconv.FormatBool(x), true
	case time.Time:
		return x.UTC().Format(time.RFC3339), true
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32), true
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case amqp.Decimal:
		return decimalText(x), true
	case []any, amqp.Table:
		j, ok := jsonValue(x)
		if !ok {
			return "", false
		}
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(j); err != nil {
			return "", false
		}
		return strings.TrimSuffix(b.String(), "\n"), true
	}
	if n, ok := headerInt(v); ok {
		return strconv.FormatInt(n, 10), true
	}
	if n, ok := v.(uint64); ok {
		return strconv.FormatUint(n, 10), true
	}
	return "", false
}

// jsonValue converts a value inside an AMQP array or table to what
// encoding/json writes: decimals as JSON numbers, floats that JSON has
// no number for (NaN, ±Inf) and timestamps as strings, byte arrays as
// strings.
func jsonValue(v any) (any, bool) {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			j, ok := jsonValue(e)
			if !ok {
				return nil, false
			}
			out[i] = j
		}
		return out, true
	case amqp.Table:
		out := make(map[string]any, len(x))
		for k, e := range x {
			j, ok := jsonValue(e)
			if !ok {
				return nil, false
			}
			out[k] = j
		}
		return out, true
	case amqp.Decimal:
		return json.Number(decimalText(x)), true
	case float32:
		if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
			s, _ := headerText(x)
			return s, true
		}
		return json.Number(strconv.FormatFloat(float64(x), 'g', -1, 32)), true
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			s, _ := headerText(x)
			return s, true
		}
		return x, true
	case nil, bool, string:
		return x, true
	}
	s, ok := headerText(v)
	if !ok {
		return nil, false
	}
	if _, isInt := headerInt(v); isInt {
		return json.Number(s), true
	}
	if _, isUint := v.(uint64); isUint {
		return json.Number(s), true
	}
	return s, true // byte arrays, timestamps
}

// decimalText writes an AMQP decimal (Value × 10^-Scale) exactly.
func decimalText(d amqp.Decimal) string {
	v := int64(d.Value)
	neg := v < 0
	if neg {
		v = -v
	}
	digits := strconv.FormatInt(v, 10)
	if s := int(d.Scale); s > 0 {
		if len(digits) <= s {
			digits = strings.Repeat("0", s-len(digits)+1) + digits
		}
		digits = digits[:len(digits)-s] + "." + digits[len(digits)-s:]
	}
	if neg {
		return "-" + digits
	}
	return digits
}

func headerString(v any) string {
	s, _ := headerText(v)
	return s
}

func headerInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	}
	return 0, false
}
