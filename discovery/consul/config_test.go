package consul_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-sidecar/vigil/discovery/consul"
)

const token = "s3cr3t-acl-token-value"

func TestSecretNeverPrints(t *testing.T) {
	cfg := consul.DefaultConfig()
	cfg.Token = consul.Secret(token)
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("cfg", "token", cfg.Token, "cfg", cfg)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("cfg", "token", cfg.Token, "cfg", cfg)
	j, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outs := map[string]string{
		"%v": fmt.Sprintf("%v", cfg.Token), "%s": fmt.Sprintf("%s", cfg.Token), "%+v cfg": fmt.Sprintf("%+v", cfg),
		"%#v": fmt.Sprintf("%#v", cfg.Token), "%q": fmt.Sprintf("%q", cfg.Token), "json": string(j), "slog": logs.String(),
	}
	for how, out := range outs {
		if strings.Contains(out, token) {
			t.Errorf("%s prints the token: %s", how, out)
		}
	}
	if !strings.Contains(outs["json"], `"token":"\u003credacted\u003e"`) && !strings.Contains(outs["json"], `"token":"<redacted>"`) {
		t.Errorf("json = %s, want a redacted token", j)
	}
	if cfg.Token.Reveal() != token {
		t.Error("Reveal lost the value")
	}
	if consul.Secret("").String() != "" {
		t.Error("an empty secret should print empty")
	}
}

func TestReadToken(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "from-env")
	var c consul.Config
	if err := c.ReadToken(); err != nil || c.Token.Reveal() != "from-env" {
		t.Fatalf("env: %v %q", err, c.Token.Reveal())
	}
	f := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(f, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.TokenFile = f
	if err := c.ReadToken(); err != nil || c.Token.Reveal() != token {
		t.Fatalf("file: %v", err)
	}
	c.TokenFile = filepath.Join(t.TempDir(), "missing")
	if err := c.ReadToken(); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	def := consul.DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	svc := consul.DefaultService()
	if err := svc.Validate(); err != nil {
		t.Fatalf("service defaults: %v", err)
	}
	bad := def
	bad.MinInterval, bad.MaxStale, bad.BackoffBase = -1, -1, 0
	want := []string{"max_stale: must be >= 0", "min_interval: must be >= 0", "backoff_base: must be > 0"}
	for _, w := range want {
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("want %q in %v", w, err)
		}
	}
	svc.Name, svc.Port, svc.Heartbeat = "web", 80, svc.TTL
	if err := svc.Validate(); err == nil || !strings.Contains(err.Error(), "heartbeat: must be less than ttl (0: ttl/3)") {
		t.Errorf("heartbeat = ttl: %v", err)
	}
}
