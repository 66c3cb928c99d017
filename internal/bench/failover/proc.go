// Package failover measures how fast each path to upstream instances (vigil's DNS, xDS and
// forwarder, Consul's DNS) stops sending traffic to an instance that is killed or
// hung, and how fast it comes back; the benchmark in this package runs it (make bench-failover).
package failover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Kind is a kind of backend.
type Kind int

// Backend kinds.
const (
	KeepAlive Kind = iota // Go net/http: keeps connections alive
	Closing               // python3 -m http.server: closes each connection after its response
	GRPC                  // gRPC health server (Go)
	numKinds
)

var kindNames = [numKinds]string{"go-http-keepalive", "python-http-closing", "grpc-health"}

func (k Kind) String() string { return kindNames[k] }

// Upstream is the name of the upstream (and Consul service) of the kind's instances.
func (k Kind) Upstream() string { return [numKinds]string{"keepalive", "closing", "grpc"}[k] }

// Instance is one backend process at a fixed address, which may be killed, stopped and revived.
type Instance struct {
	Kind    Kind
	Index   int    // 0, 1, 2 within the kind
	IP      string // 127.77.<kind+1>.<index+1>
	Port    int
	ID      string
	dir     string // python: the directory served, holding the file "id"
	backend string // path of the Go backend binary
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Addr is the instance's host:port.
func (in *Instance) Addr() string { return net.JoinHostPort(in.IP, strconv.Itoa(in.Port)) }

// newInstances makes the three instances of kind k on one port (each on its own loopback address).
func newInstances(k Kind, backend, dir string) ([]*Instance, error) {
	var port int
	var ins []*Instance
	for i := range 3 {
		ip := fmt.Sprintf("127.77.%d.%d", k+1, i+1)
		if i == 0 {
			l, err := net.Listen("tcp", ip+":0")
			if err != nil {
				return nil, fmt.Errorf("failover: port for %s: %w", k, err)
			}
			port = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		in := &Instance{Kind: k, Index: i, IP: ip, Port: port, ID: fmt.Sprintf("%s-%d", k.Upstream(), i), backend: backend}
		if k == Closing {
			in.dir = filepath.Join(dir, in.ID)
			if err := os.MkdirAll(in.dir, 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(in.dir, "id"), []byte(in.ID), 0o644); err != nil {
				return nil, err
			}
		}
		ins = append(ins, in)
	}
	return ins, nil
}

// Start starts the instance's process and waits until it accepts connections.
func (in *Instance) Start(ctx context.Context) error {
	switch in.Kind {
	case Closing:
		in.cmd = exec.Command("python3", "-m", "http.server", strconv.Itoa(in.Port), "--bind", in.IP, "--directory", in.dir)
	case GRPC:
		in.cmd = exec.Command(in.backend, "-kind", "grpc", "-listen", in.Addr(), "-id", in.ID)
	default:
		in.cmd = exec.Command(in.backend, "-kind", "http", "-listen", in.Addr(), "-id", in.ID)
	}
	in.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := in.cmd.Start(); err != nil {
		return fmt.Errorf("failover: start %s: %w", in.ID, err)
	}
	in.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(in.cmd, in.exited)
	deadline := time.Now().Add(30 * time.Second) // python starts slowly on a loaded machine
	for time.Now().Before(deadline) && ctx.Err() == nil {
		c, err := net.DialTimeout("tcp", in.Addr(), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-in.exited:
			return fmt.Errorf("failover: %s exited at start", in.ID)
		case <-time.After(2 * time.Millisecond):
		}
	}
	return fmt.Errorf("failover: %s not accepting connections within 30s", in.ID)
}

// Kill ends the process with SIGKILL and waits for it.
func (in *Instance) Kill() error {
	if in.cmd == nil || in.cmd.Process == nil {
		return errors.New("failover: not started")
	}
	_ = in.cmd.Process.Signal(syscall.SIGCONT) // a stopped process dies as well, but be plain
	if err := in.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-in.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("failover: %s did not exit", in.ID)
	}
}

// Signal sends SIGSTOP or SIGCONT.
func (in *Instance) Signal(s syscall.Signal) error { return in.cmd.Process.Signal(s) }
