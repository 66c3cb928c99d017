package dns_test

import (
	"strings"
	"testing"

	"github.com/vigil-sidecar/vigil/proxy/dns"
)

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*dns.Config)
		want string // "" for valid
	}{
		{"default", func(*dns.Config) {}, ""},
		{"alt domain", func(c *dns.Config) { c.AltDomain = "vigil.internal" }, ""},
		{"off", func(c *dns.Config) { c.Listen = "" }, ""},
		{"same alt domain", func(c *dns.Config) { c.AltDomain = "CONSUL" }, "alt_domain: must differ from domain"},
		{"root domain", func(c *dns.Config) { c.Domain = "." }, "domain: must be set"},
		{"recursor port", func(c *dns.Config) { c.Recursors = []string{"127.0.0.1:0"} }, `recursors[0]: "127.0.0.1:0" has no valid port`},
		{"ipv6 recursor", func(c *dns.Config) { c.Recursors = []string{"[::1]:53"} }, ""},
	} {
		cfg := dns.DefaultConfig()
		c.mod(&cfg)
		err := cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}
