package typed

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mqkit/mq"
)

// SpecVersion is the CloudEvents version this package reads and writes.
const SpecVersion = "1.0"

// Header prefixes of the CloudEvents protocol bindings in binary content
// mode: the attribute "id" is the header PrefixHTTP+"id" ("ce-id") in
// the HTTP binding and PrefixKafka+"id" ("ce_id") in the Kafka binding.
const (
	PrefixHTTP  = "ce-"
	PrefixKafka = "ce_"
)

// ErrInvalidEvent is wrapped by the errors of Event.Validate and
// Binding.Read.
var ErrInvalidEvent = errors.New("typed: invalid CloudEvent")

// Event holds the context attributes of a CloudEvent (version 1.0); the
// event's data is the message body. See https://cloudevents.io.
type Event struct {
	// ID identifies the event; with Source it is unique. Required.
	ID string
	// Source is the context in which the event happened, a URI-reference
	// (for example "/orders" or "https://shop.example/orders"). Required.
	Source string
	// SpecVersion is the CloudEvents version. Default SpecVersion when
	// written; only SpecVersion is read.
	SpecVersion string
	// Type describes the kind of event, by convention a reverse-DNS name
	// ("com.example.order.placed"). Required.
	Type string
	// Subject, optional, names what the event is about within Source.
	Subject string
	// Time, optional, is when the event happened.
	Time time.Time
	// DataContentType, optional, is the media type of the data. It is
	// carried in HeaderContentType (binary content mode), which the
	// codec's Encode sets already.
	DataContentType string
	// DataSchema, optional, is the absolute URI of the data's schema.
	DataSchema string
	// Extensions are further attributes. Names are lower-case ASCII
	// letters and digits, and not those of the attributes above.
	Extensions map[string]string
}

// core attribute names, which are not extensions.
var core = []string{"id", "source", "specversion", "type", "subject", "time", "datacontenttype", "dataschema", "data"}

// Validate checks e against the CloudEvents 1.0 constraints: id, source,
// specversion and type present and non-empty; source a URI-reference;
// specversion SpecVersion; datacontenttype, when set, an RFC 2046 media
// type; dataschema, when set, an absolute URI; extension names lower-case
// letters and digits that are not core names. The error lists every
// violation and wraps ErrInvalidEvent.
func (e Event) Validate() error {
	if errs := e.problems(); len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, errors.Join(errs...))
	}
	return nil
}

// problems returns e's violations of the constraints Validate checks.
func (e Event) problems() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if e.ID == "" {
		bad("id is required")
	}
	if e.Source == "" {
		bad("source is required")
	} else if _, err := url.Parse(e.Source); err != nil {
		bad("source %q is not a URI-reference", e.Source)
	}
	switch e.SpecVersion {
	case "":
		bad("specversion is required")
	case SpecVersion:
	default:
		bad("specversion %q is not supported (want %s)", e.SpecVersion, SpecVersion)
	}
	if e.Type == "" {
		bad("type is required")
	}
	if e.DataContentType != "" {
		if _, err := mediaType(e.DataContentType); err != nil {
			bad("datacontenttype %q is not a media type", e.DataContentType)
		}
	}
	if e.DataSchema != "" {
		if u, err := url.Parse(e.DataSchema); err != nil || !u.IsAbs() {
			bad("dataschema %q is not an absolute URI", e.DataSchema)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(e.Extensions)) {
		if !validName(name) {
			bad("extension name %q is not lower-case letters and digits", name)
		} else if slices.Contains(core, name) {
			bad("extension name %q is a core attribute", name)
		}
	}
	return errs
}

func validName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// Binding maps CloudEvents attributes to message headers in binary content
// mode: each attribute is a header named Prefix + its name, except
// datacontenttype, which is HeaderContentType, and the body is the event's
// data. Header values are written as they are, as the Kafka binding does
// (an HTTP bridge percent-encodes them, per the HTTP binding).
type Binding struct {
	// Prefix starts the header names. Default PrefixHTTP ("ce-"); use
	// PrefixKafka ("ce_") to interoperate with CloudEvents Kafka clients.
	Prefix string
}

func (b Binding) prefix() string {
	if b.Prefix == "" {
		return PrefixHTTP
	}
	return b.Prefix
}

// Write sets e's attributes on m's headers, after filling an empty
// SpecVersion with SpecVersion, an empty ID with m's, and an empty
// DataContentType with m's HeaderContentType. It writes nothing and
// returns an error wrapping ErrInvalidEvent when e is not valid then.
func (b Binding) Write(m *mq.Message, e Event) error {
	if e.SpecVersion == "" {
		e.SpecVersion = SpecVersion
	}
	if e.ID == "" {
		e.ID = m.ID
	}
	if e.DataContentType == "" {
		e.DataContentType = header(m, HeaderContentType)
	}
	if err := e.Validate(); err != nil {
		return err
	}
	p := b.prefix()
	m.SetHeader(p+"specversion", e.SpecVersion)
	m.SetHeader(p+"id", e.ID)
	m.SetHeader(p+"source", e.Source)
	m.SetHeader(p+"type", e.Type)
	if e.Subject != "" {
		m.SetHeader(p+"subject", e.Subject)
	}
	if !e.Time.IsZero() {
		m.SetHeader(p+"time", e.Time.Format(time.RFC3339Nano))
	}
	if e.DataSchema != "" {
		m.SetHeader(p+"dataschema", e.DataSchema)
	}
	if e.DataContentType != "" {
		m.SetHeader(HeaderContentType, e.DataContentType)
	}
	for k, v := range e.Extensions {
		m.SetHeader(p+k, v)
	}
	return nil
}

// Is reports whether m carries a CloudEvent in b's binding: whether it
// has the specversion header.
func (b Binding) Is(m *mq.Message) bool {
	_, ok := b.attrs(m)["specversion"]
	return ok
}

// attrs returns m's attribute headers by lower-case attribute name.
func (b Binding) attrs(m *mq.Message) map[string]string {
	p := strings.ToLower(b.prefix())
	out := map[string]string{}
	for k, v := range m.Headers {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, p) {
			out[lk[len(p):]] = v
		}
	}
	return out
}

// Read returns the CloudEvent m carries in b's binding, matching header
// names without regard to case. It fails, with an error wrapping
// ErrInvalidEvent and marked mq.Permanent (a message that is not a valid
// event will not become one: it belongs in the dead-letter topic), when
// a required attribute is missing, an optional one is present but empty,
// the time is not an RFC 3339 timestamp, or Validate fails.
func (b Binding) Read(m *mq.Message) (Event, error) {
	a := b.attrs(m)
	e := Event{
		ID:              a["id"],
		Source:          a["source"],
		SpecVersion:     a["specversion"],
		Type:            a["type"],
		Subject:         a["subject"],
		DataSchema:      a["dataschema"],
		DataContentType: header(m, HeaderContentType),
	}
	var errs []error
	for _, name := range []string{"subject", "time", "dataschema"} {
		if v, ok := a[name]; ok && v == "" {
			errs = append(errs, fmt.Errorf("%s is present but empty", name))
		}
	}
	if ts := a["time"]; ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			errs = append(errs, fmt.Errorf("time %q is not an RFC 3339 timestamp", ts))
		}
		e.Time = t
	}
	for name, v := range a {
		if !slices.Contains(core, name) {
			if e.Extensions == nil {
				e.Extensions = map[string]string{}
			}
			e.Extensions[name] = v
		}
	}
	errs = append(errs, e.problems()...)
	if len(errs) > 0 {
		return e, mq.Permanent(fmt.Errorf("%w in %s: %w", ErrInvalidEvent, m, errors.Join(errs...)))
	}
	return e, nil
}
