// Package pgxoutbox is package outbox for programs that use pgx
// (github.com/jackc/pgx/v5) directly: Add writes to an outbox table inside
// a pgx.Tx, and Listener is the LISTEN connection that wakes relays.
//
// The relay itself works on a *sql.DB: give it one over the program's
// pool with stdlib.OpenDBFromPool (package github.com/jackc/pgx/v5/stdlib).
//
//	listener := pgxoutbox.NewListener(connString, outbox.DefaultTable)
//	defer listener.Close()
//	relay, err := outbox.NewRelay(stdlib.OpenDBFromPool(pool), producer, outbox.Config{Notifier: listener})
//
// It is a package of its own so that programs on database/sql with
// another driver do not link pgx.
package pgxoutbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/outbox"
	"github.com/mqkit/mq/outbox/internal/wire"
)

// Add is outbox.Add for a pgx transaction: it adds msgs for topic to the
// default table inside tx, giving messages without an ID one, in place.
func Add(ctx context.Context, tx pgx.Tx, topic string, msgs ...*mq.Message) error {
	return AddTo(ctx, tx, outbox.DefaultTable, topic, msgs...)
}

// AddTo is Add for the outbox table table.
func AddTo(ctx context.Context, tx pgx.Tx, table outbox.Table, topic string, msgs ...*mq.Message) error {
	if table == "" {
		table = outbox.DefaultTable
	}
	if err := wire.ValidTable(string(table)); err != nil {
		return err
	}
	stmts, err := wire.Build(string(table), topic, msgs)
	if err != nil {
		return err
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s.SQL, s.Args...); err != nil {
			return fmt.Errorf("outbox: add to %s: %w", table, err)
		}
	}
	return nil
}

// Listener is an outbox.Notifier: one PostgreSQL connection of its own
// that LISTENs on a table's channel. It connects on the first Wait and
// again, on a later Wait, after the connection fails. It is safe for
// concurrent use; a relay calls Wait from one goroutine.
type Listener struct {
	connString string
	channel    string

	cmu    sync.Mutex // guards closed and cancel
	closed bool
	cancel context.CancelFunc // ends the Wait in progress

	mu   sync.Mutex // held by Wait while it uses conn
	conn *pgx.Conn
}

var _ outbox.Notifier = (*Listener)(nil)

// NewListener returns a listener for table's notifications on the
// database connString names (a URL or keyword/value string, as
// pgx.Connect takes). It does not connect yet.
func NewListener(connString string, table outbox.Table) *Listener {
	if table == "" {
		table = outbox.DefaultTable
	}
	return &Listener{connString: connString, channel: string(table)}
}

// ErrClosed is returned by Wait after Close.
var ErrClosed = errors.New("pgxoutbox: listener closed")

// Wait implements outbox.Notifier. After connecting (the first time, or
// again after a failure) it returns nil at once: notifications sent while
// it was not listening are lost, so the relay should look.
func (l *Listener) Wait(ctx context.Context) error {
	l.cmu.Lock()
	if l.closed {
		l.cmu.Unlock()
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	l.cancel = cancel
	l.cmu.Unlock()
	defer cancel()

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		if err := wire.ValidTable(l.channel); err != nil {
			return err
		}
		conn, err := pgx.Connect(ctx, l.connString)
		if err != nil {
			return fmt.Errorf("pgxoutbox: listener: connect: %w", err)
		}
		if _, err := conn.Exec(ctx, "LISTEN "+l.channel); err != nil {
			closeConn(conn)
			return fmt.Errorf("pgxoutbox: listener: LISTEN %s: %w", l.channel, err)
		}
		l.conn = conn
		return nil
	}
	if _, err := l.conn.WaitForNotification(ctx); err != nil {
		// pgx may not be able to use a connection whose wait was
		// interrupted: start again with a new one.
		closeConn(l.conn)
		l.conn = nil
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pgxoutbox: listener: %w", err)
	}
	return nil
}

// Close ends a Wait in progress (it returns ErrClosed or its context's
// error), closes the connection, and makes later Waits return ErrClosed.
func (l *Listener) Close() error {
	l.cmu.Lock()
	l.closed = true
	if l.cancel != nil {
		l.cancel()
	}
	l.cmu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		closeConn(l.conn)
		l.conn = nil
	}
	return nil
}

// closeConn closes conn, waiting at most 5s for the server to hear it.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
