package mq

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync"
	"time"
)

// idGen keeps UUIDv7s from one process strictly increasing, even for IDs made
// in the same millisecond (RFC 9562, method 1: a counter in rand_a).
type idGen struct {
	mu     sync.Mutex
	lastMS uint64
	seq    uint16 // 12 bits used
}

var ids idGen // guarded by its mutex; holds only a clock position, no configuration

// NewID returns a new message ID: a UUIDv7 in its canonical text form.
// IDs from one process sort in the order they were made.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[6:]); err != nil {
		// crypto/rand.Read does not fail on supported platforms (Go 1.24+
		// crashes the program instead), so this is unreachable.
		panic("mq: crypto/rand failed: " + err.Error())
	}
	ms := uint64(time.Now().UnixMilli())

	ids.mu.Lock()
	if ms <= ids.lastMS {
		ms = ids.lastMS
		ids.seq++
		if ids.seq > 0x0fff { // counter overflow: borrow the next millisecond
			ms++
			ids.seq = 0
		}
	} else {
		ids.seq = binary.BigEndian.Uint16(b[6:8]) & 0x07ff // random start, room to count
	}
	ids.lastMS = ms
	seq := ids.seq
	ids.mu.Unlock()

	b[0] = byte(ms >> 40)
	b[1] = byte(ms >> 32)
	b[2] = byte(ms >> 24)
	b[3] = byte(ms >> 16)
	b[4] = byte(ms >> 8)
	b[5] = byte(ms)
	b[6] = 0x70 | byte(seq>>8)&0x0f
	b[7] = byte(seq)
	b[8] = 0x80 | b[8]&0x3f

	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
