// Package urlparams reads the query parameters of a broker URL the same way
// for the core and every backend: each parameter is taken by name and
// parsed into its destination, malformed values and unknown names are
// collected rather than failing one at a time, and Err reports them all,
// each naming the parameter, its value and what was wanted.
//
//	q := urlparams.New(u.Query())
//	q.Int("shards", &cfg.Shards, 1)
//	q.Duration("claim_idle", &cfg.ClaimIdle, time.Millisecond)
//	if err := q.Err("redis://"); err != nil {
//		return fmt.Errorf("%w: %w", mq.ErrInvalidURL, err)
//	}
//
// A parameter given twice is an error (which one was meant?). Values are
// URL query values, never user information, so errors may quote them.
package urlparams

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query is the parameters of one URL being read.
type Query struct {
	v     url.Values
	known []string
	errs  []error
}

// New returns a reader of v. It does not modify v.
func New(v url.Values) *Query {
	c := make(url.Values, len(v))
	for k, vs := range v {
		c[k] = vs
	}
	return &Query{v: c}
}

// take returns the last value of name and removes it, recording name as a
// known parameter.
func (q *Query) take(name string) (string, bool) {
	if !slices.Contains(q.known, name) {
		q.known = append(q.known, name)
	}
	vs, ok := q.v[name]
	if !ok {
		return "", false
	}
	delete(q.v, name)
	if len(vs) == 0 {
		return "", true
	}
	if len(vs) > 1 {
		// Which one was meant? Say so rather than guess.
		q.errs = append(q.errs, fmt.Errorf("parameter %s given %d times", name, len(vs)))
		return "", false
	}
	return vs[0], true
}

// Bad records that parameter name has the unusable value v, and what it
// should be.
func (q *Query) Bad(name, v, want string) {
	q.errs = append(q.errs, fmt.Errorf("%s=%q: want %s", name, v, want))
}

// Fail records an error about the URL that is not one parameter's value
// (two parameters that conflict, say).
func (q *Query) Fail(err error) { q.errs = append(q.errs, err) }

// String sets *dst to the value of name, if present, and reports whether
// it was.
func (q *Query) String(name string, dst *string) bool {
	v, ok := q.take(name)
	if ok {
		*dst = v
	}
	return ok
}

// NonEmpty is String for a parameter that must not be empty.
func (q *Query) NonEmpty(name string, dst *string, want string) bool {
	v, ok := q.take(name)
	if !ok {
		return false
	}
	if v == "" {
		q.Bad(name, v, want)
		return true
	}
	*dst = v
	return true
}

// Int sets *dst to the whole number in name, which must be at least min.
func (q *Query) Int(name string, dst *int, min int) bool {
	v, ok := q.take(name)
	if !ok {
		return false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min {
		q.Bad(name, v, wantInt(min))
		return true
	}
	*dst = n
	return true
}

func wantInt(min int) string {
	switch min {
	case 0:
		return "a whole number"
	case 1:
		return "a whole number above 0"
	}
	return fmt.Sprintf("a whole number of at least %d", min)
}

// Duration sets *dst to the duration in name (such as 250ms or 5s), which
// must be at least min.
func (q *Query) Duration(name string, dst *time.Duration, min time.Duration) bool {
	v, ok := q.take(name)
	if !ok {
		return false
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		q.Bad(name, v, "a duration such as 250ms or 5s")
	case d < min && min > 0:
		q.Bad(name, v, fmt.Sprintf("a duration of at least %v", min))
	case d < 0:
		q.Bad(name, v, "a duration that is not negative")
	default:
		*dst = d
	}
	return true
}

// Bool sets *dst to the truth value in name (true, false, 1, 0, ...).
func (q *Query) Bool(name string, dst *bool) bool {
	v, ok := q.take(name)
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		q.Bad(name, v, "true or false")
		return true
	}
	*dst = b
	return true
}

// Enum sets *dst to the value of name, which must be one of allowed.
func (q *Query) Enum(name string, dst *string, allowed ...string) bool {
	v, ok := q.take(name)
	if !ok {
		return false
	}
	if !slices.Contains(allowed, v) {
		q.Bad(name, v, oneOf(allowed))
		return true
	}
	*dst = v
	return true
}

func oneOf(allowed []string) string {
	switch len(allowed) {
	case 0:
		return "nothing"
	case 1:
		return allowed[0]
	}
	return strings.Join(allowed[:len(allowed)-1], ", ") + " or " + allowed[len(allowed)-1]
}

// Func hands the value of name to parse, which returns the wanted form
// (such as "a Kafka version such as 3.9.0") as an error when the value is
// unusable.
func (q *Query) Func(name string, parse func(v string) error) bool {
	v, ok := q.take(name)
	if !ok {
		return false
	}
	if err := parse(v); err != nil {
		q.Bad(name, v, err.Error())
	}
	return true
}

// Keep takes the parameters names, unparsed, for a lower layer that reads
// them itself (amqp091's own URL parameters, say), and returns those
// present.
func (q *Query) Keep(names ...string) url.Values {
	out := url.Values{}
	for _, name := range names {
		if !slices.Contains(q.known, name) {
			q.known = append(q.known, name)
		}
		if vs, ok := q.v[name]; ok {
			out[name] = vs
			delete(q.v, name)
		}
	}
	return out
}

// Rest returns the parameters not taken yet.
func (q *Query) Rest() url.Values { return q.v }

// Invalid returns the problems recorded with the values taken so far
// (nil when there is none), leaving the parameters not taken to a later
// reader.
func (q *Query) Invalid() error { return errors.Join(q.errs...) }

// Err returns every problem recorded, and one error for each parameter not
// taken, naming the scheme (such as "kafka://") and the known parameters;
// nil when there is none. Callers wrap it with mq.ErrInvalidURL.
func (q *Query) Err(scheme string) error {
	errs := q.errs
	if len(q.v) > 0 {
		known := slices.Clone(q.known)
		slices.Sort(known)
		for _, name := range slices.Sorted(func(yield func(string) bool) {
			for k := range q.v {
				if !yield(k) {
					return
				}
			}
		}) {
			errs = append(errs, fmt.Errorf("unknown %s parameter %q (known: %s)", scheme, name, strings.Join(known, ", ")))
		}
	}
	return errors.Join(errs...)
}

// SplitHosts cuts a URL into what comes before its hosts (scheme:// and
// user information), its comma-separated hosts, and what follows them
// (path, query, fragment). ok is false for a URL without "://". It
// delimits the authority as url.Parse does: up to the first '/', '?' or
// '#', user information up to its last '@'; ok is false too when an '@'
// follows the authority (user information with an unencoded '/', '?' or
// '#', which url.Parse rejects: what would be cut as hosts is a piece of
// the password).
func SplitHosts(raw string) (prefix string, hosts []string, suffix string, ok bool) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return "", nil, "", false
	}
	start := i + len("://")
	end := len(raw)
	if j := strings.IndexAny(raw[start:], "/?#"); j >= 0 {
		end = start + j
	}
	if strings.Contains(raw[end:], "@") {
		return "", nil, "", false
	}
	if at := strings.LastIndex(raw[start:end], "@"); at >= 0 {
		start += at + 1
	}
	return raw[:start], strings.Split(raw[start:end], ","), raw[end:], true
}

// ParseHostList parses a URL whose host is a comma-separated list that
// url.Parse rejects (an IPv6 literal in it): the URL with one placeholder
// host, then the list put back as its Host (url.URL.String writes it as it
// is; the driver splits it). It returns nil for a URL without such a list.
func ParseHostList(raw string) *url.URL {
	prefix, hosts, suffix, ok := SplitHosts(raw)
	if !ok || len(hosts) < 2 {
		return nil
	}
	u, err := url.Parse(prefix + "mq-host-list" + suffix)
	if err != nil || u.Host != "mq-host-list" {
		return nil
	}
	u.Host = strings.Join(hosts, ",")
	return u
}
