package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
)

// statusApp runs vigil with the upstream "db" of two real TCP backends (zones z1 and z2) and
// waits until both are healthy. It returns the admin address and the backends.
func statusApp(t *testing.T) (string, []*backend) {
	t.Helper()
	bs := []*backend{{kind: "tcp", addr: "127.0.0.1:0"}, {kind: "tcp", addr: "127.0.0.1:0"}}
	for _, b := range bs {
		b.start(t)
		t.Cleanup(b.kill)
	}
	base := startApp(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults: {check: {interval: 200ms, timeout: 100ms, unhealthy_interval: 200ms}}
upstreams:
  - name: db
    instances: [{address: 127.0.0.1, port: %d, zone: z1}, {address: 127.0.0.1, port: %d, zone: z2}]
`, bs[0].port(), bs[1].port()))
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() bool {
		return upstreams(t, base)["db"].Healthy == 2
	}, "both healthy")
	return strings.TrimPrefix(base, "http://"), bs
}

func status(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := cli(append([]string{"status"}, args...), &out, &errb); code != 0 {
		t.Fatalf("status %v: exit %d: %s", args, code, errb.String())
	}
	return out.String()
}

// TestStatusJSON: -o json is the admin's JSON, whole or for one upstream or instance.
func TestStatusJSON(t *testing.T) {
	addr, bs := statusApp(t)
	var tab admin.Table
	if err := json.Unmarshal([]byte(status(t, "-addr", addr, "-o", "json")), &tab); err != nil {
		t.Fatal(err)
	}
	if len(tab.Upstreams) != 1 || tab.Upstreams[0].Healthy != 2 || len(tab.Upstreams[0].Instances) != 2 {
		t.Fatalf("json table = %+v", tab)
	}
	var u admin.Upstream
	if err := json.Unmarshal([]byte(status(t, "-addr", addr, "-o", "json", "db")), &u); err != nil || u.Name != "db" {
		t.Fatalf("json upstream: %v %+v", err, u)
	}
	id := fmt.Sprintf("127.0.0.1:%d", bs[1].port())
	var in instanceJSON
	if err := json.Unmarshal([]byte(status(t, "-addr", addr, "db/"+id, "-o", "json")), &in); err != nil {
		t.Fatal(err)
	}
	if in.Upstream != "db" || in.ID != id || in.Zone != "z2" || in.State != "healthy" || len(in.Transitions) == 0 {
		t.Errorf("json instance = %+v", in)
	}
	var out, errb bytes.Buffer
	if code := cli([]string{"status", "-addr", addr, "nope"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), `no upstream or instance "nope"`) {
		t.Errorf("unknown name: exit %d, %s", code, errb.String())
	}

	// With -watch, one JSON document a line.
	var lines syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- runStatus(ctx, []string{"-addr", addr, "-o", "json", "-watch", "db"}, &lines, &errb) }()
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return strings.Contains(lines.String(), "\n") }, "no JSON line")
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("watch exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not stop")
	}
	first, _, _ := strings.Cut(lines.String(), "\n")
	if err := json.Unmarshal([]byte(first), &u); err != nil || u.Name != "db" || len(u.Instances) != 2 {
		t.Errorf("watch JSON line: %v %q", err, first)
	}
}

// TestStatusWatchAndTransitions: -watch redraws from the event stream when an instance is
// killed; then `vigil status INSTANCE` shows its recent transitions with the cause.
func TestStatusWatchAndTransitions(t *testing.T) {
	addr, bs := statusApp(t)
	victim := fmt.Sprintf("127.0.0.1:%d", bs[0].port())

	var out, errb syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- runStatus(ctx, []string{"-addr", addr, "-watch", "db"}, &out, &errb) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("watch exit %d: %s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("watch did not stop")
		}
	}()
	frames := func() []string { return strings.Split(out.String(), "table version ")[1:] }
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool { return len(frames()) >= 1 }, "no first frame")
	if f := frames()[0]; strings.Count(f, "  HEALTHY  yes") != 2 || strings.Contains(f, "UNHEALTHY") {
		t.Fatalf("first frame:\n%s", f)
	}

	bs[0].kill()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		fs := frames()
		return strings.Contains(fs[len(fs)-1], "UNHEALTHY")
	}, "watch did not redraw the killed instance as unhealthy:\n"+out.String())
	fs := frames()
	last := fs[len(fs)-1]
	if !strings.Contains(last, "1/2 healthy") || !strings.Contains(last, "recent transitions of db") || !strings.Contains(last, "-> UNHEALTHY") {
		t.Errorf("last frame:\n%s", last)
	}
	if strings.Contains(last, "\x1b[") {
		t.Errorf("colour on a pipe:\n%q", last)
	}
	for i := 1; i < len(fs); i++ {
		if fs[i] == fs[i-1] {
			t.Errorf("frame %d repeats frame %d: a redraw without a change", i, i-1)
		}
	}

	got := status(t, "-addr", addr, victim)
	for _, want := range []string{"instance    db/" + victim, "UNHEALTHY for", "recent transitions", "HEALTHY  -> UNHEALTHY", "refused"} {
		if !strings.Contains(got, want) {
			t.Errorf("status %s lacks %q:\n%s", victim, want, got)
		}
	}
}

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}

// TestStatusColor: colour on a terminal (a real pseudo-terminal), none with NO_COLOR; the
// coloured table's columns are the plain table's once the colour codes are stripped.
func TestStatusColor(t *testing.T) {
	addr, _ := statusApp(t)
	ptm, pts := openPTY(t)
	var screen syncBuffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		pts.Close() // the terminal's reader gets EIO
		select {
		case <-read:
		case <-time.After(5 * time.Second):
			t.Error("terminal reader did not stop")
		}
	})
	// run runs vigil status on the terminal and returns what it printed there.
	run := func(mark string) string {
		t.Helper()
		var errb bytes.Buffer
		if code := runStatus(context.Background(), []string{"-addr", addr}, pts, &errb); code != 0 {
			t.Fatalf("status on a terminal: exit %d: %s", code, errb.String())
		}
		fmt.Fprintf(pts, "%s\n", mark)
		testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return strings.Contains(screen.String(), mark) },
			"status output did not reach the terminal")
		s := screen.String()
		return s[:strings.Index(s, mark)]
	}
	t.Setenv("NO_COLOR", "") // set but empty: no effect (no-color.org)
	t.Setenv("TERM", "xterm")
	colored := run("END-1")
	if !strings.Contains(colored, "\x1b[32mHEALTHY\x1b[0m") {
		t.Errorf("no green HEALTHY on a terminal:\n%q", colored)
	}
	t.Setenv("NO_COLOR", "1")
	if plain := run("END-2")[len(colored)+len("END-1\r\n"):]; strings.Contains(plain, "\x1b[") || !strings.Contains(plain, "HEALTHY") {
		t.Errorf("NO_COLOR on a terminal:\n%q", plain)
	}

	var tab admin.Table
	if err := getJSON(context.Background(), "http://"+addr+"/v1/upstreams", &tab); err != nil {
		t.Fatal(err)
	}
	c, _ := renderStatus(&tab, &statusOpts{output: "table", color: true})
	p, _ := renderStatus(&tab, &statusOpts{output: "table"})
	stripped := string(c)
	for _, code := range []string{"39", "01", "31", "32", "33", "0"} {
		stripped = strings.ReplaceAll(stripped, "\x1b["+code+"m", "")
	}
	if stripped != string(p) {
		t.Errorf("coloured table, stripped:\n%s\nplain:\n%s", stripped, p)
	}
}
