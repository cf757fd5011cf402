package redisstream

import (
	"context"
	cryptotls "crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/internal/tlsfiles"
	"github.com/mqkit/mq/internal/urlparams"
)

// URL schemes registered with mq.Register.
const (
	SchemeRedis       = "redis"           // one Redis server
	SchemeRedisTLS    = "rediss"          // one Redis server over TLS
	SchemeCluster     = "redis+cluster"   // Redis Cluster, seed nodes comma-separated
	SchemeClusterTLS  = "rediss+cluster"  // Redis Cluster over TLS
	SchemeSentinel    = "redis+sentinel"  // Sentinel-managed primary, sentinels comma-separated
	SchemeSentinelTLS = "rediss+sentinel" // Sentinel-managed primary over TLS
)

// Config defaults.
const (
	defaultClaimIdle     = 30 * time.Second
	defaultBlock         = 2 * time.Second
	defaultShardLease    = 10 * time.Second
	defaultMaxMessageLen = 64 << 20
)

func init() {
	for _, s := range []string{SchemeRedis, SchemeRedisTLS, SchemeCluster, SchemeClusterTLS, SchemeSentinel, SchemeSentinelTLS} {
		mq.Register(s, driver{})
	}
}

type driver struct{}

// Open implements mq.Driver: it parses u (see the package documentation
// for its forms and parameters), connects and pings the server.
func (driver) Open(ctx context.Context, u *url.URL) (mq.Conn, error) {
	spec, cfg, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	client := spec.newClient()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redisstream: ping %s: %w", spec.addrs(), redactErr(err, spec.password()))
	}
	if cfg.Logger == nil {
		cfg.Logger = mq.LoggerFrom(ctx)
	}
	c, err := newConn(client, cfg, true)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	return c, nil
}

// clientSpec is a parsed URL: the go-redis options of exactly one of the
// three deployment shapes.
type clientSpec struct {
	simple   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

func (s clientSpec) newClient() redis.UniversalClient {
	switch {
	case s.cluster != nil:
		return redis.NewClusterClient(s.cluster)
	case s.failover != nil:
		return redis.NewFailoverClient(s.failover)
	default:
		return redis.NewClient(s.simple)
	}
}

func (s clientSpec) addrs() string {
	switch {
	case s.cluster != nil:
		return "cluster " + strings.Join(s.cluster.Addrs, ",")
	case s.failover != nil:
		return fmt.Sprintf("sentinel %s master %q", strings.Join(s.failover.SentinelAddrs, ","), s.failover.MasterName)
	default:
		return s.simple.Addr
	}
}

func (s clientSpec) password() string {
	switch {
	case s.cluster != nil:
		return s.cluster.Password
	case s.failover != nil:
		return s.failover.Password
	default:
		return s.simple.Password
	}
}

// goRedisForbidden are go-redis query parameters that this package does not
// accept: addresses go in the host list, and credentials in the user
// information only (where errors and logs redact them).
var goRedisForbidden = map[string]string{
	"addr":              "list the addresses in the host part, comma-separated",
	"password":          "put credentials in the user information (redis://user:password@host), which is redacted in errors",
	"username":          "put credentials in the user information (redis://user:password@host)",
	"sentinel_password": "put credentials in the user information and set sentinel_auth=true",
	"sentinel_username": "put credentials in the user information and set sentinel_auth=true",
	"master_name":       "use master=NAME",
}

// parseURL turns u into client options and a Config. Errors wrap
// mq.ErrInvalidURL and never contain the password.
func parseURL(u *url.URL) (clientSpec, Config, error) {
	var spec clientSpec
	var cfg Config
	password, _ := u.User.Password()
	fail := func(format string, args ...any) (clientSpec, Config, error) {
		err := fmt.Errorf("%w: "+format, append([]any{mq.ErrInvalidURL}, args...)...)
		return clientSpec{}, Config{}, redactErr(err, password)
	}

	tls := strings.HasPrefix(u.Scheme, "rediss")
	var shape string
	switch u.Scheme {
	case SchemeRedis, SchemeRedisTLS:
		shape = "simple"
	case SchemeCluster, SchemeClusterTLS:
		shape = "cluster"
	case SchemeSentinel, SchemeSentinelTLS:
		shape = "sentinel"
	default:
		return fail("scheme %q is not one of redis, rediss, redis+cluster, rediss+cluster, redis+sentinel, rediss+sentinel", u.Scheme)
	}
	if u.Opaque != "" {
		return fail("want %s://host:port, got an opaque URL", u.Scheme)
	}
	if u.Fragment != "" {
		return fail("a Redis URL takes no #fragment")
	}

	for name, why := range goRedisForbidden {
		if u.Query().Has(name) {
			return fail("parameter %s is not accepted: %s", name, why)
		}
	}
	p := urlparams.New(u.Query())
	p.Duration("claim_idle", &cfg.ClaimIdle, 10*time.Millisecond)
	p.Duration("block", &cfg.Block, time.Millisecond)
	p.Duration("max_age", &cfg.MaxAge, time.Millisecond)
	p.Duration("shard_lease", &cfg.ShardLease, 100*time.Millisecond)
	p.Func("maxlen", func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return errors.New("a whole number above 0")
		}
		cfg.MaxLen = n
		return nil
	})
	p.Func("shards", func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxShards {
			return fmt.Errorf("a whole number from 1 to %d", maxShards)
		}
		cfg.Shards = n
		return nil
	})
	hasWait := p.Int("wait_replicas", &cfg.WaitReplicas, 0)
	if p.Duration("wait_timeout", &cfg.WaitTimeout, time.Millisecond) && !hasWait {
		p.Fail(errors.New("parameter wait_timeout needs wait_replicas"))
	}
	start := "earliest"
	p.Enum("start", &start, "earliest", "latest")
	cfg.StartLatest = start == "latest"
	// TLS material go-redis's URL parser has no parameters for.
	var tlsCA, tlsCert, tlsKey, tlsServerName string
	hasCA := p.String("tls_ca", &tlsCA)
	hasCert := p.String("tls_cert", &tlsCert)
	hasKey := p.String("tls_key", &tlsKey)
	hasSNI := p.String("tls_server_name", &tlsServerName)
	if (hasCA || hasCert || hasKey || hasSNI) && !tls {
		p.Fail(errors.New("parameters tls_ca, tls_cert, tls_key and tls_server_name need a rediss scheme"))
	}
	if hasCert != hasKey {
		p.Fail(errors.New("parameters tls_cert and tls_key go together"))
	}
	var master string
	hasMaster := p.String("master", &master)
	sentinelAuth := false
	p.Bool("sentinel_auth", &sentinelAuth)
	if shape != "sentinel" && (hasMaster || sentinelAuth) {
		p.Fail(fmt.Errorf("parameters master and sentinel_auth are only for %s:// URLs", SchemeSentinel))
	}
	if cfg.MaxLen > 0 && cfg.MaxAge > 0 {
		p.Fail(errors.New("parameters maxlen and max_age exclude each other (XADD trims by one strategy)"))
	}
	if err := p.Invalid(); err != nil {
		return fail("%w", err)
	}
	// The rest are go-redis's own (timeouts, pool sizes, protocol...): its
	// parser reads them and rejects unknown ones.
	q := p.Rest()

	hosts := strings.Split(u.Host, ",")
	for i, h := range hosts {
		if h == "" {
			if len(hosts) == 1 {
				hosts[i] = "localhost:6379"
				continue
			}
			return fail("empty address in host list %q", u.Host)
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			// Host without a port: use the default port of the shape.
			port := "6379"
			if shape == "sentinel" {
				port = "26379"
			}
			if strings.Contains(strings.Trim(h, "[]"), ":") && !strings.HasPrefix(h, "[") {
				return fail("address %q: put IPv6 literals in brackets", h)
			}
			hosts[i] = net.JoinHostPort(strings.Trim(h, "[]"), port)
		}
	}
	if shape == "simple" && len(hosts) > 1 {
		return fail("%s:// takes one address, got %d: use %s:// or %s:// for several", u.Scheme, len(hosts), SchemeCluster, SchemeSentinel)
	}
	if shape == "sentinel" && master == "" {
		return fail("%s:// needs master=NAME (the name the sentinels monitor)", u.Scheme)
	}

	// Build a go-redis URL from the rest, so its parser handles its own
	// parameters (timeouts, pool sizes, protocol, skip_verify...) and
	// rejects unknown ones.
	g := url.URL{Scheme: "redis", Host: hosts[0], Path: u.Path, RawQuery: q.Encode()}
	if tls {
		g.Scheme = "rediss"
	}
	gq := g.Query()
	for _, h := range hosts[1:] {
		gq.Add("addr", h)
	}
	if shape == "sentinel" {
		gq.Set("master_name", master)
	}
	g.RawQuery = gq.Encode()
	var err error
	switch shape {
	case "simple":
		spec.simple, err = redis.ParseURL(g.String())
		if err == nil {
			spec.simple.Username, spec.simple.Password = userPassword(u)
		}
	case "cluster":
		if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
			return fail("Redis Cluster has only database 0, got path %q", u.Path)
		}
		g.Path = ""
		spec.cluster, err = redis.ParseClusterURL(g.String())
		if err == nil {
			spec.cluster.Username, spec.cluster.Password = userPassword(u)
		}
	case "sentinel":
		spec.failover, err = redis.ParseFailoverURL(g.String())
		if err == nil {
			spec.failover.Username, spec.failover.Password = userPassword(u)
			if sentinelAuth {
				spec.failover.SentinelUsername, spec.failover.SentinelPassword = userPassword(u)
			}
		}
	}
	if err != nil {
		return fail("%v", err)
	}
	if tls {
		tc := spec.tlsConfig()
		if tc == nil {
			return fail("rediss URL without a TLS configuration")
		}
		if hasSNI {
			tc.ServerName = tlsServerName
		}
		if err := tlsfiles.Load(tc, tlsCA, tlsCert, tlsKey); err != nil {
			return fail("%v", err)
		}
	}
	return spec, cfg, nil
}

// tlsConfig returns the TLS configuration go-redis's parser made for a
// rediss URL.
func (s clientSpec) tlsConfig() *cryptotls.Config {
	switch {
	case s.simple != nil:
		return s.simple.TLSConfig
	case s.cluster != nil:
		return s.cluster.TLSConfig
	case s.failover != nil:
		return s.failover.TLSConfig
	}
	return nil
}

func userPassword(u *url.URL) (user, password string) {
	if u.User == nil {
		return "", ""
	}
	p, _ := u.User.Password()
	return u.User.Username(), p
}

// redactErr makes sure err's text does not contain password.
func redactErr(err error, password string) error {
	if err == nil || password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), password, "xxxxx"), err: err}
}

// redactedError hides a password that appeared in an error's text. It
// answers errors.Is for the errors it replaces, but does not unwrap to them
// (their text holds the password).
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string        { return e.msg }
func (e *redactedError) Is(target error) bool { return errors.Is(e.err, target) }
