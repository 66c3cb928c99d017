package consul

import (
	"encoding/json"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
)

// FuzzInstances feeds arbitrary /v1/health/service bodies, decoded as the Consul API client
// decodes them, to the translation into instances. Whatever Consul (or something posing as it)
// answers, vigil must not panic, and every instance it keeps must be one the rest of vigil can
// serve as it would a static one: an address, a port in 1..65535, a weight in 1..65535 (Envoy
// refuses an endpoint set whose weights sum beyond 2^32), a known health, a unique ID, sorted.
func FuzzInstances(f *testing.F) {
	f.Add([]byte(`[{"Node":{"Node":"n1","Address":"10.0.0.1","Datacenter":"dc1","Meta":{"zone":"a"}},
 "Service":{"ID":"web-1","Service":"web","Tags":["v1"],"Address":"","Port":8080,"Meta":{"zone":"b"},"Weights":{"Passing":3,"Warning":1}},
 "Checks":[{"Status":"passing"},{"Status":"warning"}]},
 {"Node":{"Node":"n2","Address":"10.0.0.2"},"Service":{"ID":"web-2","Address":"10.0.0.9","Port":8081,"Weights":{"Passing":1}},
 "Checks":[{"Status":"critical"}]},
 {"Node":{"Node":"n3","Address":"10.0.0.3"},"Service":{"ID":"web-3","Port":8082},"Checks":[{"Status":"maintenance"}]}]`))
	f.Add([]byte(`[{"Node":{"Node":"n1","Address":""},"Service":{"ID":"x","Port":0,"Weights":{"Passing":-5}}}]`))
	f.Add([]byte(`[{"Node":{"Node":"n1","Address":"h"},"Service":{"ID":"x","Port":70000,"Weights":{"Passing":4294967296}}},
 {"Node":{"Node":"n1","Address":"h"},"Service":{"ID":"x","Port":1}}]`))
	f.Add([]byte(`[null, {"Node":null}, {"Service":null}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var entries []*api.ServiceEntry
		if json.Unmarshal(body, &entries) != nil {
			return
		}
		for _, passing := range []bool{true, false} {
			cfg := DefaultConfig()
			cfg.WarningIsPassing = passing
			w := &watcher{cfg: &cfg, upstream: "web", service: "web", dc: "dc1"}
			ins := w.instances(entries)
			for i, in := range ins {
				if in.Address == "" || in.Port < 1 || in.Port > 65535 || in.Weight < 1 || in.Weight > 65535 {
					t.Fatalf("instance %d cannot be served: %+v", i, in)
				}
				if in.Health != discovery.Passing && in.Health != discovery.Critical && in.Health != discovery.Maintenance {
					t.Fatalf("instance %d: health %v", i, in.Health)
				}
				if i > 0 && ins[i-1].ID >= in.ID {
					t.Fatalf("IDs not unique and sorted: %q then %q", ins[i-1].ID, in.ID)
				}
			}
		}
	})
}
