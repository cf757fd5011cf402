package redisstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/mqkit/mq"
)

// mapErr classifies an error of a Redis command (see classify). A closed
// go-redis client is mq.ErrClosed when the client will not come back: the
// Conn was closed, or the caller closed the client it gave NewConn. On a
// Redis Cluster client that is still open, it is a node's client closed by
// a topology change: a transient failure.
func (c *Conn) mapErr(err error) error {
	_, cluster := c.client.(*redis.ClusterClient)
	if !cluster && (redis.HasErrorPrefix(err, "MOVED ") || redis.HasErrorPrefix(err, "ASK ")) {
		// Not an outage: a redis:// (or Sentinel) URL names a node of a
		// Redis Cluster, which will redirect every time.
		return fmt.Errorf("%w (the server is a Redis Cluster node: use a %s:// URL)", err, SchemeCluster)
	}
	return classify(err, c.isClosed() || !cluster)
}

// classify returns err wrapped so that callers can tell what happened:
//
//   - mq.ErrClosed for a closed go-redis client when clientClosed (it will
//     not come back);
//   - mq.ErrUnavailable for a transient failure to reach Redis or to be
//     served by it: a refused, reset or dropped connection (io.EOF, a
//     connection go-redis marked bad), a network timeout or other network
//     error, the connection pool timing out, a closed client that is not
//     clientClosed, and the replies of a server that is not serving now:
//     LOADING, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, READONLY (a primary
//     turned replica by a failover), BUSY, NOREPLICAS, max clients, and
//     the MOVED and ASK redirections of a Redis Cluster slot that moved
//     or is moving, where a command on a node's own connection meets them
//     (the Cluster client follows them itself elsewhere);
//   - otherwise err as it is (a context's error is the caller's, not an
//     outage; a TLS certificate error or an authentication failure will
//     not pass by itself).
//
// The result wraps err too, so errors.Is(err, redis.Nil) and the like
// still work.
func classify(err error, clientClosed bool) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mq.ErrClosed), errors.Is(err, mq.ErrUnavailable):
		return err
	case errors.Is(err, redis.ErrClosed):
		if clientClosed {
			return fmt.Errorf("%w: %w", mq.ErrClosed, err)
		}
		return fmt.Errorf("%w: %w", mq.ErrUnavailable, err)
	case transient(err):
		return fmt.Errorf("%w: %w", mq.ErrUnavailable, err)
	}
	return err
}

// transient reports whether err is a failure to reach Redis or to be
// served by it that retrying later may overcome (see classify).
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || certError(err) || redis.IsAuthError(err) {
		return false
	}
	switch {
	case errors.Is(err, redis.ErrPoolTimeout),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return true
	case redis.IsLoadingError(err), redis.IsMasterDownError(err), redis.IsClusterDownError(err),
		redis.IsTryAgainError(err), redis.IsReadOnlyError(err), redis.IsNoReplicasError(err),
		redis.IsMaxClientsError(err), redis.HasErrorPrefix(err, "BUSY "),
		redis.HasErrorPrefix(err, "MOVED "), redis.HasErrorPrefix(err, "ASK "):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true // dial failures, timeouts, DNS: the network between us and Redis
	}
	// go-redis's dedicated connections (redis.Conn) report a connection
	// broken by an earlier network failure with this text only.
	return strings.Contains(err.Error(), "redis: Conn is in a bad state")
}

// certError reports whether err is a TLS or certificate failure: a
// misconfiguration, not an outage, even when a network error wraps it.
func certError(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		alert     tls.AlertError
		record    tls.RecordHeaderError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &record)
}
