package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// bodyLimit is how much of a response body is read and matched.
const bodyLimit = 64 << 10

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	bodies  = sync.Pool{New: func() any { b := make([]byte, bodyLimit); return &b }}
)

// attempt probes once. When hedge is set (the instance is healthy) and the probe is still
// unanswered at half its timeout, a second probe on fresh connections runs alongside it, with the
// same deadline: the instance passes if either is answered in time, and fails twice at once if
// neither is, so that a hung instance is found within one timeout rather than two. fails is the
// number of failures to count.
func (p *prober) attempt(ctx context.Context, deadline time.Time, conn net.Conn, gc *grpcConn, hedge bool) (net.Conn, *grpcConn, error, int) {
	if (p.chk.cfg.Kind == KindHTTP || p.chk.cfg.Kind == KindHTTPS) && p.req == nil && p.chk.err == nil {
		// only this prober's probe goroutine writes req, before any hedge reads it
		req, err := p.buildRequest()
		if err != nil {
			closeConn(conn)
			return nil, gc, err, 1
		}
		p.req = req
	}
	if !hedge || p.chk.err != nil {
		conn, gc, err := p.run(ctx, deadline, conn, gc)
		return conn, gc, err, 1
	}
	type result struct {
		conn net.Conn
		gc   *grpcConn
		err  error
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hedged := make(chan result, 1)
	t := time.AfterFunc(p.chk.cfg.Timeout/2, func() {
		p.hedging()
		c, g, err := p.run(hctx, deadline, nil, nil)
		hedged <- result{c, g, err}
	})
	conn, gc, err := p.run(ctx, deadline, conn, gc)
	if t.Stop() {
		return conn, gc, err, 1
	}
	if err == nil {
		cancel()
	}
	h := <-hedged
	switch {
	case err == nil:
		closeConn(h.conn)
		h.gc.close()
		return conn, gc, nil, 1
	case h.err == nil: // the kept connection was stuck, a fresh one was answered
		closeConn(conn)
		gc.close()
		return h.conn, h.gc, nil, 1
	}
	closeConn(h.conn)
	h.gc.close()
	return conn, gc, err, 2
}

// definitive reports whether a probe error proves the instance down without a second probe:
// the connection was refused (nothing listens on the port; the host itself answered).
func definitive(err error) bool { return err != nil && errors.Is(err, syscall.ECONNREFUSED) }

// run probes once by the check's kind and returns the connections to keep until the next probe.
func (p *prober) run(ctx context.Context, deadline time.Time, conn net.Conn, gc *grpcConn) (net.Conn, *grpcConn, error) {
	if p.chk.err != nil {
		closeConn(conn)
		return nil, gc, p.chk.err
	}
	switch p.chk.cfg.Kind {
	case KindHTTP, KindHTTPS:
		conn, err := p.probeHTTP(ctx, deadline, conn)
		return conn, gc, err
	case KindGRPC:
		closeConn(conn)
		gc, err := p.probeGRPC(ctx, deadline, gc)
		return nil, gc, err
	case KindTLS:
		closeConn(conn)
		conn, err := p.dial(ctx, deadline, true)
		if tc, ok := conn.(*tls.Conn); ok {
			// Only the socket is kept until the next probe (to notice a crash): the TLS state, its
			// buffers and the peer's parsed certificates (~10 KB an instance), is never used again.
			conn = tc.NetConn()
		}
		return conn, gc, err
	default: // tcp: a fresh connect each time; the connection is kept to notice a crash before the next one
		closeConn(conn)
		conn, err := p.dial(ctx, deadline, false)
		return conn, gc, err
	}
}

// dial connects to the instance, with a TLS handshake if useTLS.
func (p *prober) dial(ctx context.Context, deadline time.Time, useTLS bool) (net.Conn, error) {
	d := net.Dialer{Deadline: deadline, KeepAlive: -1}
	conn, err := d.DialContext(ctx, "tcp", p.hostport)
	if err != nil {
		return nil, shortErr(err, p.chk.cfg.Timeout)
	}
	if !useTLS {
		return conn, nil
	}
	p.mu.Lock()
	if p.tlsCfg == nil {
		p.tlsCfg = p.chk.tlsFor(p.address)
	}
	cfg := p.tlsCfg
	p.mu.Unlock()
	tc := tls.Client(conn, cfg)
	_ = tc.SetDeadline(deadline)
	if err := tc.HandshakeContext(ctx); err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("tls handshake: %w", shortErr(err, p.chk.cfg.Timeout))
	}
	idle(tc)
	return tc, nil
}

// probeHTTP sends one request, on the kept connection if there is one.
func (p *prober) probeHTTP(ctx context.Context, deadline time.Time, conn net.Conn) (net.Conn, error) {
	for {
		reused := conn != nil
		if !reused {
			var err error
			if conn, err = p.dial(ctx, deadline, p.chk.cfg.Kind == KindHTTPS); err != nil {
				return nil, err
			}
		}
		// The round trip runs on connection deadlines; a canceled ctx (shutdown, prober stopped)
		// cuts it short by moving the deadline to now.
		stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
		keep, err, early := p.roundTrip(conn, deadline)
		if !stop() && keep != nil { // canceled during the round trip: the connection is spoiled
			closeConn(keep)
			keep = nil
		}
		if err != nil && reused && early && ctx.Err() == nil && time.Now().Before(deadline) {
			conn = nil // the kept connection went stale: once more on a new one
			continue
		}
		idle(keep)
		return keep, err
	}
}

// buildRequest serializes the check's request for this instance.
func (p *prober) buildRequest() ([]byte, error) {
	h := &p.chk.cfg.HTTP
	scheme := "http"
	if p.chk.cfg.Kind == KindHTTPS {
		scheme = "https"
	}
	req, err := http.NewRequest(h.Method, scheme+"://"+p.hostport+h.Path, nil)
	if err != nil {
		return nil, fmt.Errorf("http request: %w", err)
	}
	req.Header.Set("User-Agent", "vigil-health/1")
	for k, v := range h.Headers {
		if http.CanonicalHeaderKey(k) == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if h.Host != "" {
		req.Host = h.Host
	}
	var b bytes.Buffer
	if err := req.Write(&b); err != nil {
		return nil, fmt.Errorf("http request: %w", err)
	}
	return b.Bytes(), nil
}

// roundTrip writes the request and reads the response; keep is conn if it can be used again.
// early is true when the connection failed before any response came.
func (p *prober) roundTrip(conn net.Conn, deadline time.Time) (keep net.Conn, err error, early bool) {
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(p.req); err != nil {
		closeConn(conn)
		return nil, shortErr(err, p.chk.cfg.Timeout), true
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(conn)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	resp, err := http.ReadResponse(br, p.chk.method)
	if err != nil {
		closeConn(conn)
		early = errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errors.New("http: connection closed without a response"), early
		}
		return nil, shortErr(err, p.chk.cfg.Timeout), early
	}
	want := p.chk.cfg.HTTP.BodyContains
	var found, complete bool
	var rerr error
	if want != "" {
		bp := bodies.Get().(*[]byte)
		var n int
		n, complete, rerr = readBody(resp.Body, *bp)
		found = bytes.Contains((*bp)[:n], []byte(want))
		bodies.Put(bp)
	} else {
		var n int64
		n, rerr = io.CopyN(io.Discard, resp.Body, bodyLimit+1)
		complete = n <= bodyLimit && rerr == io.EOF
		if rerr == io.EOF {
			rerr = nil
		}
	}
	if complete && rerr == nil && !resp.Close && br.Buffered() == 0 {
		keep = conn
	} else {
		closeConn(conn)
	}
	switch {
	case resp.StatusCode == http.StatusRequestTimeout && !p.chk.statusOK(resp.StatusCode):
		// Perhaps sent by the server on the idle connection before closing it (as net/http's
		// Transport also assumes): on a kept connection, try once more on a new one.
		closeConn(keep)
		return nil, fmt.Errorf("http status %d, want %s", resp.StatusCode, p.chk.want), true
	case !p.chk.statusOK(resp.StatusCode):
		return keep, fmt.Errorf("http status %d, want %s", resp.StatusCode, p.chk.want), false
	case rerr != nil:
		return keep, fmt.Errorf("http: read body: %w", shortErr(rerr, p.chk.cfg.Timeout)), false
	case want != "" && !found:
		return keep, fmt.Errorf("body does not contain %q", want), false
	}
	return keep, nil, false
}

// readBody reads up to len(buf) bytes of body; complete reports whether that was all of it.
func readBody(body io.Reader, buf []byte) (n int, complete bool, err error) {
	n, err = io.ReadFull(body, buf)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return n, true, nil
	case err != nil:
		return n, false, err
	}
	var one [1]byte
	m, err := body.Read(one[:])
	return n, m == 0 && err == io.EOF, nil
}

// idle clears the deadline of a connection kept between probes: a deadline left set is a
// runtime timer that wakes the process for nothing when it expires, once per probe.
func idle(conn net.Conn) {
	if conn != nil {
		_ = conn.SetDeadline(time.Time{})
	}
}

// closeConn closes a probe connection; a plain TCP one with a reset, which leaves no TIME_WAIT
// behind (10,000 instances probed each second would leave 600,000).
// A TLS connection is closed without a close_notify: its peer may be gone.
func closeConn(conn net.Conn) {
	if conn == nil {
		return
	}
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// shortErr makes a probe error short and clear for people.
func shortErr(err error, timeout time.Duration) error {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Errorf("lookup %s: %s", dns.Name, dns.Err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("dial %s %v: no connection within %s", op.Net, op.Addr, timeout)
		}
		return fmt.Errorf("no response within %s", timeout)
	}
	return err
}
