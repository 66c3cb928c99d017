package main

import (
	"reflect"

	"github.com/vigil-sidecar/vigil/configs"
)

// keepRestartOnly compares the settings that only take effect at start (listen addresses, TLS,
// logging, the Consul connection, the local service, the DNS server's settings but its TTLs)
// between the running configuration old and a reloaded cfg. It returns the names of those
// that changed, and puts the running values back into cfg, so that the configuration kept
// describes what runs and the next reload warns again.
func keepRestartOnly(old, cfg *configs.Config) []string {
	var changed []string
	keep := func(name string, running, next any, restore func()) {
		if !reflect.DeepEqual(running, next) {
			changed = append(changed, name)
			restore()
		}
	}
	keep("admin", old.Admin, cfg.Admin, func() { cfg.Admin = old.Admin })
	keep("log", old.Log, cfg.Log, func() { cfg.Log = old.Log })
	keep("node.datacenter", old.Node.Datacenter, cfg.Node.Datacenter, func() { cfg.Node.Datacenter = old.Node.Datacenter })
	keep("discovery", old.Discovery, cfg.Discovery, func() { cfg.Discovery = old.Discovery })
	keep("share", old.Share, cfg.Share, func() { cfg.Share = old.Share })
	oc, nc := old.Consul, cfg.Consul
	oc.Token, nc.Token = "", "" // read from token_file at start only
	keep("consul", oc, nc, func() { cfg.Consul = old.Consul })
	keep("service", old.Service, cfg.Service, func() { cfg.Service = old.Service })
	keep("dns", old.DNS, cfg.DNS, func() { cfg.DNS = old.DNS })
	keep("xds.listen", old.XDS.Listen, cfg.XDS.Listen, func() { cfg.XDS.Listen = old.XDS.Listen })
	keep("xds.tls", old.XDS.TLS, cfg.XDS.TLS, func() { cfg.XDS.TLS = old.XDS.TLS })
	keep("xds.version_file", old.XDS.VersionFile, cfg.XDS.VersionFile, func() { cfg.XDS.VersionFile = old.XDS.VersionFile })
	keep("xds.limits", old.XDS.Limits, cfg.XDS.Limits, func() { cfg.XDS.Limits = old.XDS.Limits })
	return changed
}
