// Package forward measures vigil's L4 forwarder against HAProxy and a direct connection, on the same loopback backends (make bench-forward).
package forward

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
)

// Request kinds: the first byte a client sends.
const (
	cmdBulk = 'B' // followed by 8 bytes, big endian: the backend sends that many bytes, then EOF
	cmdRR   = 'R' // the first of 100-byte requests, each answered with 100 bytes, until EOF
)

// msgSize is the size of a request and of its reply.
const msgSize = 100

// Backends are TCP servers on loopback that answer both kinds of request.
type Backends struct {
	Addrs []string
	lns   []net.Listener
	wg    sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartBackends listens on n loopback ports and serves them until Close.
func StartBackends(n int) (*Backends, error) {
	b := &Backends{conns: map[net.Conn]struct{}{}}
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Close()
			return nil, err
		}
		b.lns = append(b.lns, ln)
		b.Addrs = append(b.Addrs, ln.Addr().String())
		b.wg.Go(func() { b.accept(ln) })
	}
	return b, nil
}

func (b *Backends) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Go(func() {
			serve(c.(*net.TCPConn))
			c.Close()
			b.mu.Lock()
			delete(b.conns, c)
			b.mu.Unlock()
		})
	}
}

var bulkBuf = make([]byte, 256<<10)

// serve answers one connection (a health probe that sends nothing just ends).
func serve(c *net.TCPConn) {
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return
	}
	switch cmd[0] {
	case cmdBulk:
		var n [8]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		left := int64(binary.BigEndian.Uint64(n[:]))
		for left > 0 {
			w, err := c.Write(bulkBuf[:min(left, int64(len(bulkBuf)))])
			if err != nil {
				return
			}
			left -= int64(w)
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	case cmdRR:
		var req, reply [msgSize]byte
		if _, err := io.ReadFull(c, req[1:]); err != nil {
			return
		}
		for {
			if _, err := c.Write(reply[:]); err != nil {
				return
			}
			if _, err := io.ReadFull(c, req[:]); err != nil {
				return
			}
		}
	}
}

// Close stops the backends and closes their connections.
func (b *Backends) Close() error {
	var errs []error
	for _, ln := range b.lns {
		errs = append(errs, ln.Close())
	}
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return errors.Join(errs...)
}
