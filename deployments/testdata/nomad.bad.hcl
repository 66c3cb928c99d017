# vigil next to a service on Nomad with Consul: one group holds the app, vigil (a prestart sidecar
# task) and Envoy (a poststart sidecar), sharing the allocation's network namespace (bridge mode).
# Nomad registers the app in Consul itself (service block), so vigil only discovers and
# health-checks the upstreams it serves to Envoy (xDS) and the app (DNS) on loopback.
#   nomad job run -var vigil_image=ghcr.io/vigil-sidecar/vigil:v0.1.0 deployments/nomad/vigil.nomad.hcl  # from the repository root
# Checked by `make test` (deployments/nomad_test.go): parsed with HCL and decoded strictly into the
# jobspec's blocks and attributes (an unknown or misspelt one, a wrong type, is an error); vigil's
# configuration with vigil's parser; the Envoy bootstrap is configs/envoy-bootstrap.yaml.

variable "vigil_image" {
  type    = string
  default = "ghcr.io/vigil-sidecar/vigil:v0.1.0"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "checkout" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "checkout" {
    count = "three"

    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
    }

    # Nomad deregisters the app from Consul first, waits shutdown_delay while callers move away,
    # then stops the tasks; vigil's SIGTERM drain fits in its kill_timeout.
    shutdown_delay = "10s"

    service {
      name     = "checkout"
      port     = "http"
      provider = "consul"
      tags     = ["v3"]

      check {
        type     = "http"
        path     = "/healthz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "vigil" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        image = var.vigil_image
        args  = ["run", "-config", "${NOMAD_TASK_DIR}/vigil.yaml"]
      }

      # The Consul agent on the node: Nomad's bridge network reaches the host at the gateway.
      template {
        destination   = "local/vigil.yaml"
        change_mode   = "signal"
        change_signal = "SIGHUP" # vigil reloads its configuration on SIGHUP
        data          = <<-EOT
          node:
            datacenter: {{ env "NOMAD_DC" }}
          log: {level: info, format: json}
          admin:
            listen: 127.0.0.1:9480
          consul:
            enabled: true
            address: {{ env "attr.unique.network.ip-address" }}:8500
            zone_meta_key: zone
          defaults:
            check: {kind: http, http: {path: /healthz}}
            panic_threshold: 50
            zone_preference: true
          dns:
            listen: 127.0.0.1:8600
          xds:
            listen: 127.0.0.1:18000
          upstreams:
            - name: payments
              consul: {fallback_datacenters: [dc2]}
              xds: {protocol: http, listen_port: 15001}
            - name: inventory
              check: {kind: grpc}
              consul: {}
              xds: {listen_port: 15002}
        EOT
      }

      kill_signal  = "SIGTERM"
      kill_timout = "30s"

      resources {
        cpu    = 100
        memory = 128
      }
    }

    task "envoy" {
      driver = "docker"

      lifecycle {
        hook    = "poststart"
        sidecar = true
      }

      config {
        image = "envoyproxy/envoy:v1.36.2"
        args = [
          "-c", "${NOMAD_TASKDIR}/envoy-bootstrap.yaml",
          "--service-node", "${NOMAD_ALLOC_ID}",
          "--service-cluster", "checkout",
        ]
      }

      # configs/envoy-bootstrap.yaml (kept equal by deployments' tests).
      template {
        destination     = "local/envoy-bootstrap.yaml"
        left_delimiter  = "[["
        right_delimiter = "]]"
        data            = file("configs/envoy-bootstrap.yaml")   # paths are relative to where nomad runs
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }

    task "app" {
      driver = "docker"

      config {
        image = "ghcr.io/example/checkout:1.0.0"
        ports = ["http"]
      }

      env {
        PAYMENTS_URL   = "http://127.0.0.1:15001"
        INVENTORY_ADDR = "127.0.0.1:15002"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
