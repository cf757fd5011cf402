package rabbit

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/urlparams"
)

// A URL may name several brokers, the nodes of a cluster, separated by
// commas: amqp://user:pass@h1:5672,h2:5672,[::1]:5672/vhost. Each is
// dialed with the same credentials, vhost and parameters.

// endpoint is one broker of Config.URL.
type endpoint struct {
	addr string // as written in the URL: host, host:port, [v6] or [v6]:port
	url  string // Config.URL naming this broker alone
}

// multiHostTimeout bounds each broker's connection attempt when the URL
// names several and sets no connection_timeout, so that a node that
// accepts TCP connections but does not answer (hung, paused) does not hold
// up the others for amqp091's 30s.
const multiHostTimeout = 5 * time.Second

// minHostShare is the least of a connection attempt's time each broker of
// a list gets (see link.dial).
const minHostShare = time.Second

// endpoints returns the brokers of cfg.URL, checking each one's URL with
// amqp091's parser. A URL with one host gives one endpoint with cfg.URL
// itself. Errors do not contain the password.
func (cfg *Config) endpoints() ([]endpoint, error) {
	prefix, hosts, suffix, ok := urlparams.SplitHosts(cfg.URL)
	if !ok || len(hosts) == 1 {
		if err := checkAMQPURL(cfg.URL); err != nil {
			return nil, err
		}
		addr := ""
		if ok {
			addr = hosts[0]
		}
		return []endpoint{{addr: addr, url: cfg.URL}}, nil
	}
	eps := make([]endpoint, 0, len(hosts))
	for _, h := range hosts {
		switch {
		case h == "":
			return nil, fmt.Errorf("%w %q: empty host in the host list", mq.ErrInvalidURL, mq.RedactURL(cfg.URL))
		case !strings.HasPrefix(h, "[") && strings.Count(h, ":") > 1:
			return nil, fmt.Errorf("%w %q: host %q: put IPv6 addresses in brackets ([::1]:5672)", mq.ErrInvalidURL, mq.RedactURL(cfg.URL), h)
		}
		one := prefix + h + suffix
		if err := checkAMQPURL(one); err != nil {
			return nil, fmt.Errorf("%w (host %q of the list)", err, h)
		}
		eps = append(eps, endpoint{addr: h, url: one})
	}
	return eps, nil
}

// checkAMQPURL checks a URL naming one broker with url.Parse and
// amqp091's parser.
func checkAMQPURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w %q: %s", mq.ErrInvalidURL, mq.RedactURL(raw), mq.URLParseError(raw, err))
	}
	if _, err := amqp.ParseURI(raw); err != nil {
		// amqp091's messages name parameters and rules, not the URL.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%w %q: %v", mq.ErrInvalidURL, u.Redacted(), err)
	}
	return nil
}

// hostError is one broker's failure in a connection attempt.
type hostError struct {
	addr string
	err  error
}

// dialErrors is the failure of a connection attempt to every broker of a
// URL's list: each one's address and error (never the credentials). It
// unwraps to the errors, and is transient (see transient) when any of
// them is: the cluster may serve again without a change.
type dialErrors []hostError

func (e dialErrors) Error() string {
	var b strings.Builder
	b.WriteString("no broker answered: ")
	for i, h := range e {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %v", h.addr, h.err)
	}
	return b.String()
}

func (e dialErrors) Unwrap() []error {
	errs := make([]error, len(e))
	for i, h := range e {
		errs[i] = h.err
	}
	return errs
}

// anyOf reports whether pred holds for one of the errors.
func (e dialErrors) anyOf(pred func(error) bool) bool {
	for _, h := range e {
		if pred(h.err) {
			return true
		}
	}
	return false
}
