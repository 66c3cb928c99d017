package admin_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// fakeControl records what the control endpoints ask for.
type fakeControl struct {
	mu        sync.Mutex
	reloadErr error
	calls     []string
	holds     []table.Hold
}

func (f *fakeControl) Reload(who admin.Who) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "reload by "+who.Actor+" because "+who.Reason)
	return []string{"dns"}, f.reloadErr
}

func (f *fakeControl) Hold(who admin.Who, h table.Hold, on bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.Upstream != "api" {
		return nil, fmt.Errorf("no upstream %q: %w", h.Upstream, admin.ErrNotFound)
	}
	f.calls = append(f.calls, fmt.Sprintf("hold %s %v by %s because %s", h.Target(), on, h.Actor, h.Reason))
	if on {
		f.holds = append(f.holds, h)
	} else {
		f.holds = nil
	}
	return nil, nil
}

func (f *fakeControl) Holds() []table.Hold {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holds
}

func do(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("X-Vigil-Actor", "alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestControlOffByDefault: without a token the control endpoints do not exist.
func TestControlOffByDefault(t *testing.T) {
	base := serve(t, fixture(), prometheus.NewRegistry())
	for _, r := range [][2]string{{"POST", "/v1/reload"}, {"GET", "/v1/maint"}, {"PUT", "/v1/maint/api"}, {"DELETE", "/v1/maint/api/a"}} {
		if code, body := do(t, r[0], base+r[1], "anything", ""); code != http.StatusNotFound || !strings.Contains(body, "admin.token_file") {
			t.Errorf("%s %s without a configured token: %d %s, want 404 naming admin.token_file", r[0], r[1], code, body)
		}
	}
}

// TestControlToken: a missing token is 401, a wrong one 403 (nothing applied), the right one 200.
func TestControlToken(t *testing.T) {
	tb := fixture()
	s := admin.New(admin.Config{Listen: "127.0.0.1:0"}, tb, prometheus.NewRegistry(), nil)
	f := &fakeControl{}
	s.SetControl(f, "s3cret")
	base := serveServer(t, s)

	if code, _ := do(t, "POST", base+"/v1/reload", "", ""); code != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", code)
	}
	for _, wrong := range []string{"s3cre", "s3cret2", "S3CRET", "x"} {
		if code, _ := do(t, "POST", base+"/v1/reload", wrong, ""); code != http.StatusForbidden {
			t.Errorf("wrong token %q: %d, want 403", wrong, code)
		}
	}
	if len(f.calls) != 0 {
		t.Fatalf("applied without the right token: %q", f.calls)
	}
	code, body := do(t, "POST", base+"/v1/reload", "s3cret", `{"reason":"new upstream"}`)
	var rr admin.ReloadResult
	if code != http.StatusOK || json.Unmarshal([]byte(body), &rr) != nil || !rr.Applied || rr.RestartRequired[0] != "dns" ||
		!strings.Contains(rr.Message, "need a restart") {
		t.Errorf("reload: %d %s", code, body)
	}

	var errs field.Errors
	errs.Addf("upstreams[0].name", "must be set")
	errs.Add("", errors.New("line 3: bad"))
	f.reloadErr = errs.Err()
	code, body = do(t, "POST", base+"/v1/reload", "s3cret", "")
	if code != http.StatusUnprocessableEntity || json.Unmarshal([]byte(body), &rr) != nil || rr.Applied || len(rr.Errors) != 2 {
		t.Errorf("bad reload: %d %s, want 422 listing 2 errors", code, body)
	}

	if code, body := do(t, "PUT", base+"/v1/maint/api/a?reason=kernel+upgrade", "s3cret", ""); code != http.StatusOK || !strings.Contains(body, `"maintenance": true`) {
		t.Errorf("maint enable: %d %s", code, body)
	}
	if code, body := do(t, "PUT", base+"/v1/maint/nope", "s3cret", `{"reason":"x"}`); code != http.StatusNotFound {
		t.Errorf("maint of an unknown upstream: %d %s, want 404", code, body)
	}
	if code, _ := do(t, "PUT", base+"/v1/maint/api", "s3cret", `{not json`); code != http.StatusBadRequest {
		t.Errorf("bad body: %d, want 400", code)
	}
	if code, body := do(t, "GET", base+"/v1/maint", "s3cret", ""); code != http.StatusOK || !strings.Contains(body, `"instance": "a"`) {
		t.Errorf("maint list: %d %s", code, body)
	}
	if code, _ := do(t, "DELETE", base+"/v1/maint/api/a", "s3cret", ""); code != http.StatusOK {
		t.Errorf("maint disable: %d", code)
	}
	want := []string{
		"reload by alice because new upstream",
		"reload by alice because ",
		"hold api/a true by alice because kernel upgrade",
		"hold api/a false by alice because ",
	}
	if strings.Join(f.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}
}

// serveServer runs s on a free loopback port until the test ends.
func serveServer(t *testing.T, s *admin.Server) string {
	t.Helper()
	addrc := make(chan net.Addr, 1)
	s.OnListen = func(a net.Addr) { addrc <- a }
	run := testutil.Run(t, s, time.Second)
	select {
	case a := <-addrc:
		return "http://" + a.String()
	case <-run.Done():
		t.Fatalf("admin did not start: %v", run.Err())
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not start")
	}
	return ""
}
