package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// roundTrip makes one short connection: connect, a 100-byte request, a 100-byte reply, close.
func roundTrip(p *Path) error {
	c, err := p.Dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var req, reply [msgSize]byte
	req[0] = cmdRR
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	_, err = io.ReadFull(c, reply[:])
	return err
}

// Bulk downloads total bytes over conns connections at once and returns MB/s (10^6 bytes).
func Bulk(p *Path, conns int, total int64) (float64, error) {
	per := total / int64(conns)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range conns {
		wg.Go(func() {
			c, err := p.Dial()
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			var req [9]byte
			req[0] = cmdBulk
			binary.BigEndian.PutUint64(req[1:], uint64(per))
			if _, err := c.Write(req[:]); err != nil {
				errs[i] = err
				return
			}
			n, err := io.Copy(io.Discard, c)
			if err == nil && n != per {
				err = fmt.Errorf("bulk: got %d bytes, want %d", n, per)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(per*int64(conns)) / time.Since(start).Seconds() / 1e6, nil
}

// ShortRate makes short connections from workers clients at once for d; it returns
// connections per second and how many failed.
func ShortRate(p *Path, workers int, d time.Duration) (float64, int64) {
	var ok, failed atomic.Int64
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(end) {
				if err := roundTrip(p); err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(ok.Load()) / time.Since(start).Seconds(), failed.Load()
}

// P99 makes n 100-byte request/responses over one kept connection and returns the 99th
// percentile of their latency.
func P99(p *Path, n int) (time.Duration, error) {
	c, err := p.Dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	var req, reply [msgSize]byte
	req[0] = cmdRR
	lat := make([]time.Duration, 0, n)
	for i := range n + 1 {
		t := time.Now()
		if _, err := c.Write(req[:]); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, reply[:]); err != nil {
			return 0, err
		}
		if i > 0 { // the first includes the connect to the instance
			lat = append(lat, time.Since(t))
		}
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100], nil
}

var straceLine = regexp.MustCompile(`(?m)^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)(?:\s+\d+)?\s+(\w+)\s*$`)

// SyscallCounts runs strace -f -c on the path's process during a bulk transfer of total
// bytes and returns the calls of splice, read and write it counted (nil without strace).
func SyscallCounts(ctx context.Context, p *Path, total int64) (map[string]int64, error) {
	if _, err := exec.LookPath("strace"); err != nil {
		return nil, nil
	}
	cmd := exec.CommandContext(ctx, "strace", "-f", "-c", "-e", "trace=splice,read,write,recvfrom,sendto", "-p", fmt.Sprint(p.Pid))
	out := &lockedBuf{}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// strace prints "Process N attached" once it is attached to each thread.
	for deadline := time.Now().Add(10 * time.Second); !out.contains("attached") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	_, bulkErr := Bulk(p, 1, total)
	syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
	cmd.Wait()
	if bulkErr != nil {
		return nil, bulkErr
	}
	counts := map[string]int64{}
	for _, m := range straceLine.FindAllStringSubmatch(out.String(), -1) {
		var n int64
		fmt.Sscan(m[1], &n)
		counts[m[2]] = n
	}
	return counts, nil
}

type lockedBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

func (l *lockedBuf) contains(s string) bool { return strings.Contains(l.String(), s) }
