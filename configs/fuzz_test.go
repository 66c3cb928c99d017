package configs_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/field"
)

// FuzzParse feeds arbitrary bytes to the configuration loader. It must never panic; it must
// decide the same way twice; a refusal lists at least one error, each with text; an accepted
// configuration validates again as it is, and has upstreams unless it says allow_empty.
// Seeds: the embedded default, testdata/*.yaml and the shipped deployments.
func FuzzParse(f *testing.F) {
	f.Add(configs.Default)
	files, _ := filepath.Glob("testdata/*.yaml")
	deployments, _ := filepath.Glob("../deployments/*.yaml")
	for _, p := range append(files, deployments...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("a: &a [*a, *a]\n"))                                      // a recursive alias
	f.Add([]byte("x: &x [1,1,1,1]\ny: &y [*x,*x,*x,*x]\nz: [*y,*y,*y]\n")) // a small alias bomb
	f.Add([]byte("upstreams:\n  - &u {name: a, instances: [{address: 127.0.0.1, port: 1}]}\n  - <<: *u\n    name: b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := configs.Parse(data)
		cfg2, err2 := configs.Parse(data)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("two parses differ: %v / %v", err, err2)
		}
		if err != nil {
			errs := field.Flatten(err)
			if len(errs) == 0 {
				t.Fatal("refused with no error listed")
			}
			for _, e := range errs {
				if e.Error() == "" {
					t.Fatal("an empty error message")
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("an accepted configuration does not validate: %v", err)
		}
		if len(cfg.Upstreams) == 0 && !cfg.AllowEmpty && !(cfg.Consul.Enabled && cfg.Consul.Catalog.Filter != "") {
			t.Fatal("accepted with no upstreams and no allow_empty")
		}
		_ = cfg2
	})
}
