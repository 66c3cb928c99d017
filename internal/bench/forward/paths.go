package forward

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Path is one way from the client to the backends.
type Path struct {
	Name string
	Pid  int // the proxy process, 0 for direct
	addr func() string
	stop func()
}

// Dial connects through the path.
func (p *Path) Dial() (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", p.addr(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Close stops the path's process, if any.
func (p *Path) Close() {
	if p.stop != nil {
		p.stop()
	}
}

// Direct connects to the backends in turn.
func Direct(b *Backends) *Path {
	var n atomic.Uint64
	return &Path{Name: "direct", addr: func() string { return b.Addrs[n.Add(1)%uint64(len(b.Addrs))] }}
}

// startProc starts cmd with its output in log and returns a stop that kills it by its pid.
func startProc(cmd *exec.Cmd, log string) (stop func(), exited <-chan struct{}, err error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	return func() { syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); <-done }, done, nil
}

var listening = regexp.MustCompile(`msg="forward: listening" .*upstream=bench addr=(\S+)`)

// Vigil runs the vigil binary with upstream "bench" forwarded to the backends, on a port it
// picks itself (listen 127.0.0.1:0) and logs.
func Vigil(ctx context.Context, bin, dir string, b *Backends) (*Path, error) {
	var y strings.Builder
	y.WriteString("log: {level: info}\nadmin: {listen: \"127.0.0.1:0\"}\ndns: {listen: \"\"}\nxds: {listen: \"\"}\n")
	y.WriteString("upstreams:\n  - name: bench\n    check: {kind: tcp}\n")
	y.WriteString("    forward: {listen: \"127.0.0.1:0\", max_connections: 4096}\n    instances:\n")
	for _, a := range b.Addrs {
		host, port, _ := net.SplitHostPort(a)
		fmt.Fprintf(&y, "      - {address: %s, port: %s}\n", host, port)
	}
	cfg := filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(cfg, []byte(y.String()), 0o644); err != nil {
		return nil, err
	}
	log := filepath.Join(dir, "vigil.log")
	cmd := exec.Command(bin, "run", "-config", cfg)
	stop, exited, err := startProc(cmd, log)
	if err != nil {
		return nil, fmt.Errorf("bench: start vigil: %w", err)
	}
	p := &Path{Name: "vigil", Pid: cmd.Process.Pid, stop: stop}
	var addr string
	for addr == "" {
		if data, err := os.ReadFile(log); err == nil {
			if m := listening.FindSubmatch(data); m != nil {
				addr = string(m[1])
			}
		}
		if err := wait(ctx, exited, "vigil", log); err != nil {
			stop()
			return nil, err
		}
	}
	p.addr = func() string { return addr }
	// Ready once both instances are probed and served: a request/response goes through.
	for ready := 0; ready < 2*len(b.Addrs); {
		if err := roundTrip(p); err == nil {
			ready++
		} else if err := wait(ctx, exited, "vigil", log); err != nil {
			stop()
			return nil, err
		}
	}
	return p, nil
}

// HAProxy runs haproxy in mode tcp, balance leastconn, over the backends, on a listener passed
// as its file descriptor 3.
func HAProxy(ctx context.Context, dir string, b *Backends) (*Path, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var c strings.Builder
	// splice-auto: HAProxy splices when it sees it pays, as vigil always does.
	c.WriteString("global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  option splice-auto\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n\n")
	c.WriteString("frontend fe\n  bind fd@3\n  default_backend be\n\nbackend be\n  balance leastconn\n")
	for i, a := range b.Addrs {
		fmt.Fprintf(&c, "  server s%d %s\n", i, a)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(c.String()), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("haproxy", "-db", "-f", cfg)
	cmd.ExtraFiles = []*os.File{f}
	log := filepath.Join(dir, "haproxy.log")
	stop, exited, err := startProc(cmd, log)
	if err != nil {
		return nil, fmt.Errorf("bench: start haproxy: %w", err)
	}
	addr := ln.Addr().String()
	p := &Path{Name: "haproxy", Pid: cmd.Process.Pid, addr: func() string { return addr }, stop: stop}
	for ready := 0; ready < 2; {
		if err := roundTrip(p); err == nil {
			ready++
		} else if err := wait(ctx, exited, "haproxy", log); err != nil {
			stop()
			return nil, err
		}
	}
	return p, nil
}

// wait pauses briefly, or fails when the process exited (with its log) or ctx ended.
func wait(ctx context.Context, exited <-chan struct{}, name, log string) error {
	select {
	case <-exited:
		out, _ := os.ReadFile(log)
		return fmt.Errorf("bench: %s exited:\n%s", name, out[max(0, len(out)-2000):])
	case <-ctx.Done():
		return fmt.Errorf("bench: %s not ready: %w", name, ctx.Err())
	case <-time.After(20 * time.Millisecond):
		return nil
	}
}

// cpuTicks returns the user and system CPU time of pid, in clock ticks (1/100 s).
func cpuTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	// Fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var ut, st int64
	if _, err := fmt.Sscan(f[11], &ut); err != nil {
		return 0, err
	}
	if _, err := fmt.Sscan(f[12], &st); err != nil {
		return 0, err
	}
	return ut + st, nil
}
