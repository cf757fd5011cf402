package redisstream_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// freezer is a TCP proxy in front of Redis that can stop passing bytes
// either way while keeping the connections open: to one client it looks
// as if Redis (or the network) hung, while other clients talk to Redis
// directly.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{} // closed when unfrozen
	conns  []net.Conn
	wg     sync.WaitGroup
}

// newFreezer starts a proxy to target and stops it when the test ends.
func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target, thaw: make(chan struct{})}
	close(f.thaw)
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return f.ln.Addr().String() }

func (f *freezer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		r, err := net.Dial("tcp", f.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, r)
		f.mu.Unlock()
		f.wg.Add(2)
		go f.pipe(r, c)
		go f.pipe(c, r)
	}
}

// pipe copies from src to dst, holding every chunk while frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.mu.Lock()
			thaw := f.thaw
			f.mu.Unlock()
			<-thaw
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				_ = src.Close()
			}
			return
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.frozen {
		f.frozen, f.thaw = true, make(chan struct{})
	}
}

func (f *freezer) unfreeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen {
		f.frozen = false
		close(f.thaw)
	}
}

func (f *freezer) close() {
	_ = f.ln.Close()
	f.unfreeze()
	f.mu.Lock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// TestCutOffMemberStopsBeforeLeaseExpiry cuts one member of a sharded
// group off from Redis (its connections hang; the other member and the
// producer still reach Redis) while it runs a slow handler, for longer
// than the shard lease. The other member takes the shards once their
// leases expire in Redis and handles what was pending, including the
// message the cut-off member was running. The cut-off member must have
// given its shards up by its own clock before that: its handler's context
// cancelled, so the two never run one key at the same time. Then the
// member is reconnected. Nothing may be lost or reordered.
func TestCutOffMemberStopsBeforeLeaseExpiry(t *testing.T) {
	br := testbed.Redis(t)
	proxy := newFreezer(t, br.Addr)
	const params = "/0?shards=4&shard_lease=2s&claim_idle=2s&block=300ms"
	ctx := context.Background()
	prod := openURL(t, br.URL+params[2:])
	cutOff := openURL(t, "redis://"+proxy.addr()+params)
	direct := openURL(t, br.URL+params[2:])
	topic := topicName(t)
	l := newOrderLedger()
	l.slowEvery, l.slowWork, l.slowStart = 400, 4*time.Second, make(chan int, 1)
	consume(t, cutOff, topic, "g", l.handler(0, 5*time.Millisecond), mq.WithConcurrency(4))
	consume(t, direct, topic, "g", l.handler(1, 5*time.Millisecond), mq.WithConcurrency(4))
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.produce(pctx, prod.Producer(), topic, 8, 20*time.Millisecond)
	}()
	defer func() {
		stop()
		wg.Wait()
	}()

	time.Sleep(2 * time.Second) // both members hold shards
	deadline := time.After(20 * time.Second)
	for waiting := true; waiting; {
		select {
		case who := <-l.slowStart:
			waiting = who != 0
		case <-deadline:
			t.Fatal("the member to cut off started no slow handling within 20s")
		}
	}
	proxy.freeze()
	cut := time.Now()
	time.Sleep(5 * time.Second) // past the lease: the direct member takes over
	proxy.unfreeze()
	t.Logf("member 0 cut off from Redis for %v while running a 4s handler (shard lease 2s)", time.Since(cut).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()
	l.waitAll(t, 30*time.Second)
	l.report(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancelled == 0 {
		t.Error("no handler was cancelled: the cut-off member's slow handler ran to its end")
	}
}
