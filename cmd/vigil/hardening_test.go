package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// TestValidateRefusesWhatRunRefuses: a missing CA, certificate or token file is refused by
// validate and by a reload's loadConfig, with every error listed, as run refuses it.
func TestValidateRefusesWhatRunRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vigil.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf(`
consul: {enabled: true, token_file: %[1]s/token}
xds: {tls: {cert_file: %[1]s/xds.crt, key_file: %[1]s/xds.key}}
upstreams:
  - name: a
    check: {kind: https, tls: {ca_file: %[1]s/ca.pem}}
    instances: [{address: 127.0.0.1, port: 1}]
`, dir)), 0o600)
	var out, errb bytes.Buffer
	if code := cli([]string{"validate", "-config", path}, &out, &errb); code != 1 {
		t.Fatalf("validate: exit %d, want 1\n%s%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"3 error(s)", "upstreams[0].check.tls.ca_file: open " + dir + "/ca.pem",
		"consul.token_file: open " + dir + "/token", "xds.tls: open " + dir + "/xds.crt"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("validate output lacks %q:\n%s", want, errb.String())
		}
	}
	errb.Reset()
	if code := cli([]string{"run", "-config", path}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "3 error(s)") {
		t.Errorf("run: exit %d, want 1 with all 3 errors:\n%s", code, errb.String())
	}
	// A reload reads the file through loadConfig: refused, so the running configuration stays.
	if _, err := loadConfig(path); err == nil {
		t.Error("a reload would accept a check whose tls.ca_file is missing")
	}
}

// TestReloadWarnsRestartOnly: a reload that changes a listen address says it needs a restart,
// and the kept configuration still names the running address.
func TestReloadWarnsRestartOnly(t *testing.T) {
	old, err := configs.Parse([]byte("admin: {listen: \"127.0.0.1:1\"}\nupstreams: [{name: a, instances: [{address: 127.0.0.1, port: 1}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	next, err := configs.Parse([]byte("admin: {listen: \"127.0.0.1:2\"}\ndns: {listen: \"127.0.0.1:3\"}\nxds: {listen: \"127.0.0.1:4\", coalesce: 5ms}\nupstreams: [{name: b, instances: [{address: 127.0.0.1, port: 1}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := keepRestartOnly(old, next)
	if want := "[admin dns xds.listen]"; fmt.Sprint(got) != want {
		t.Errorf("restart-only changes %v, want %s", got, want)
	}
	if next.Admin.Listen != "127.0.0.1:1" || next.DNS.Listen != old.DNS.Listen || next.XDS.Listen != old.XDS.Listen {
		t.Errorf("kept configuration does not describe what runs: admin %s dns %s xds %s", next.Admin.Listen, next.DNS.Listen, next.XDS.Listen)
	}
	if next.XDS.Coalesce != 5*time.Millisecond || next.Upstreams[0].Name != "b" {
		t.Error("reloadable settings were not kept from the new configuration")
	}
}

// TestSignalsDuringStart: a SIGHUP or SIGTERM that arrives while vigil reads its configuration
// does not kill it by the signal. The configuration is a FIFO: once the test can open it for
// writing, vigil is inside main, reading it.
func TestSignalsDuringStart(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "vigil.yaml")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
			cmd := exec.Command(os.Args[0], "run", "-config", fifo)
			cmd.Env = append(os.Environ(), "VIGIL_TEST_MAIN=1")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill() })
			yml := fmt.Sprintf("admin: {listen: \"127.0.0.1:0\"}\nxds: {listen: \"127.0.0.1:0\"}\ndns: {listen: \"127.0.0.1:0\"}\nupstreams:\n  - name: a\n    instances: [{address: 127.0.0.1, port: %d}]\n", testutil.ClosedPort(t))
			opened := make(chan *os.File, 2)
			open := func() {
				f, err := os.OpenFile(fifo, os.O_WRONLY, 0) // blocks until vigil opens it
				if err == nil {
					opened <- f
				}
			}
			go open()
			var w *os.File
			select {
			case w = <-opened:
			case <-time.After(10 * time.Second):
				t.Fatal("vigil did not open its configuration")
			}
			cmd.Process.Signal(sig)
			w.WriteString(yml)
			w.Close()

			lines := make(chan string, 100)
			go func() {
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			var log strings.Builder
			wait := func(substr string) {
				t.Helper()
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							t.Fatalf("vigil ended before %q:\n%s", substr, log.String())
						}
						log.WriteString(l + "\n")
						if strings.Contains(l, substr) {
							return
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("no %q within 10s:\n%s", substr, log.String())
					}
				}
			}
			if sig == syscall.SIGHUP {
				// Delivery is asynchronous: the SIGHUP is queued during start-up or arrives just
				// after it; either way it is one reload, which reads the FIFO again once the
				// first read is done.
				wait("vigil: starting")
				go func() {
					open()
					w := <-opened
					w.WriteString(yml)
					w.Close()
				}()
				wait("configuration reloaded")
				cmd.Process.Signal(syscall.SIGTERM)
			} else {
				// Delivery is asynchronous: vigil stops before start or just after, never killed.
				wait("stopped")
			}
			for range lines {
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("exit: %v (want 0, not killed by %s)\n%s", err, sig, log.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatal("vigil did not exit")
			}
		})
	}
}
