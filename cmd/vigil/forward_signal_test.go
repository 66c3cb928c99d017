package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// On SIGTERM the vigil process stops accepting on its forward listener at once, lets an open
// forwarded connection run on through its drain, closes it at the end of the drain, and exits 0.
func TestForwardSIGTERMDrains(t *testing.T) {
	e := newEchoServer(t)
	cfg := filepath.Join(t.TempDir(), "vigil.yaml")
	if err := os.WriteFile(cfg, []byte(forwardConfig(`{listen: "127.0.0.1:0", drain: 5s}`, e.port())), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "run", "-config", cfg)
	cmd.Env = append(os.Environ(), "VIGIL_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	addrc := make(chan string, 1)
	logc := make(chan string, 1)
	re := regexp.MustCompile(`msg="forward: listening" .*addr=(\S+)`)
	go func() {
		var all strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrc <- m[1]
			}
		}
		logc <- all.String()
		exited <- cmd.Wait()
	}()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(10 * time.Second):
		t.Fatal("no forward listener logged")
	}
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool { return echoOnce(addr, "ready") == nil }, "forwarding")
	kept, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	if err := ping(kept, "before"); err != nil {
		t.Fatal(err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	}, "listener closed after SIGTERM")
	if err := ping(kept, "during the drain"); err != nil {
		t.Fatalf("open connection during the drain: %v", err)
	}
	kept.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.Copy(io.Discard, kept); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("open connection not closed at the end of the drain: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, <-logc)
		}
		exited <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("vigil did not exit after the drain")
	}
}

// ping sends msg on a kept connection and reads it back.
func ping(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch")
	}
	return nil
}
