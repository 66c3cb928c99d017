module github.com/vigil-sidecar/vigil/deployments

go 1.26.8

require github.com/vigil-sidecar/vigil v0.0.0

require (
	github.com/compose-spec/compose-go/v2 v2.16.2 // indirect
	github.com/moby/buildkit v0.34.2 // indirect
	github.com/prometheus/prometheus v0.316.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)

replace github.com/vigil-sidecar/vigil => ../
