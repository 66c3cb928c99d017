package xds

import (
	"encoding/json"
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // HttpProtocolOptions in typed_extension_protocol_options
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"
)

// TestEnvoyBootstrap parses configs/envoy-bootstrap.yaml into Envoy's v3 Bootstrap and validates it.
func TestEnvoyBootstrap(t *testing.T) {
	b, err := os.ReadFile("../configs/envoy-bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, &bs); err != nil {
		t.Fatalf("protojson: %v", err)
	}
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if got := bs.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); got != "127.0.0.1" {
		t.Errorf("admin on %q, want loopback", got)
	}
	ads := bs.GetDynamicResources().GetAdsConfig()
	if ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "vigil_xds" ||
		bs.GetDynamicResources().GetCdsConfig().GetAds() == nil || bs.GetDynamicResources().GetLdsConfig().GetAds() == nil {
		t.Errorf("dynamic resources not over ADS to vigil_xds: %v", bs.GetDynamicResources())
	}
	xc := bs.GetStaticResources().GetClusters()[0]
	sa := xc.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa.GetAddress()+":"+itoa(uint64(sa.GetPortValue())) != DefaultListen {
		t.Errorf("vigil_xds points at %s:%d, want %s", sa.GetAddress(), sa.GetPortValue(), DefaultListen)
	}
	opts, ok := xc.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	if !ok {
		t.Fatal("vigil_xds has no HTTP/2 protocol options: gRPC needs HTTP/2")
	}
	// ValidateAll does not look inside an Any: validate the typed config itself.
	m, err := opts.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.(validator).ValidateAll(); err != nil {
		t.Errorf("HttpProtocolOptions: %v", err)
	}
}
