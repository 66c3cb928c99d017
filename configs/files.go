package configs

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/internal/tlsutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// Load parses data as Parse does and also checks every file the configuration names (CA
// bundles, certificates and keys, the Consul and admin token files, the directory of xds.version_file),
// so that what `vigil run` would refuse, `vigil validate` and a reload refuse too. Every
// problem is reported, the parse errors first.
func Load(data []byte) (*Config, error) { return parse(data, true) }

// CheckFiles reports every file named by c that cannot be read or used as it will be at start.
func (c *Config) CheckFiles() error {
	var errs field.Errors
	ca := func(path, file string) {
		if file != "" {
			if _, err := tlsutil.LoadCAPool(file); err != nil {
				errs.Addf(path, "%v", err)
			}
		}
	}
	pair := func(path, cert, key string) {
		if cert != "" && key != "" {
			if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
				errs.Addf(path, "%v", err)
			}
		}
	}
	check := func(path string, chk *health.CheckConfig) { ca(path+".tls.ca_file", chk.TLS.CAFile) }

	check("defaults.check", &c.Defaults.Check)
	for i := range c.Upstreams {
		check(fmt.Sprintf("upstreams[%d].check", i), &c.Upstreams[i].Check)
	}
	if c.Service.Name != "" {
		check("service.check", &c.Service.Check)
	}
	if c.Consul.Enabled {
		ca("consul.tls.ca_file", c.Consul.TLS.CAFile)
		pair("consul.tls", c.Consul.TLS.CertFile, c.Consul.TLS.KeyFile)
		if f := c.Consul.TokenFile; f != "" {
			if err := tlsutil.CheckFile(f); err != nil {
				errs.Addf("consul.token_file", "%v", err)
			}
		}
	}
	if f := c.Admin.TokenFile; f != "" {
		if err := tlsutil.CheckFile(f); err != nil {
			errs.Addf("admin.token_file", "%v", err)
		}
	}
	if c.XDS.Listen != "" {
		pair("xds.tls", c.XDS.TLS.CertFile, c.XDS.TLS.KeyFile)
		ca("xds.tls.client_ca_file", c.XDS.TLS.ClientCAFile)
		if f := c.XDS.VersionFile; f != "" {
			if st, err := os.Stat(filepath.Dir(f)); err != nil || !st.IsDir() {
				errs.Addf("xds.version_file", "directory %s does not exist", filepath.Dir(f))
			}
		}
	}
	return errs.Err()
}

// dropDuplicateKeys removes, in every mapping under n, the later occurrences of a key. The
// strict pass reports each duplicate with its line; without them, the lenient passes decode the
// rest of the mapping instead of giving up on it, which would report false follow-on errors
// (a missing name, empty instances) about fields that are there.
func dropDuplicateKeys(n *yaml.Node) {
	if n == nil {
		return
	}
	if n.Kind == yaml.MappingNode {
		seen := map[string]bool{}
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind == yaml.ScalarNode && k.Tag != "!!merge" {
				if seen[k.Value] {
					continue
				}
				seen[k.Value] = true
			}
			kept = append(kept, k, n.Content[i+1])
		}
		n.Content = kept
	}
	for _, c := range n.Content {
		dropDuplicateKeys(c)
	}
}
