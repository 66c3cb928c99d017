// Command vigil is a service-discovery and health-checking sidecar.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/field"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `vigil — service discovery and health checking for the services next to it.

Usage:
  vigil run      [-config FILE] [-demo]   run (on the embedded default without -config)
  vigil validate [-config FILE]           check a configuration; list every error
  vigil status   [-addr HOST:PORT] [NAME] show upstreams and instances from a running vigil
  vigil health   [-addr HOST:PORT] [-path /healthz|/readyz]  exit 0 if a running vigil answers 200
  vigil version                           print the version
`

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

func cli(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "health":
		return cmdHealth(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "vigil %s %s\n", version, runtime.Version())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "vigil: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// loadConfig reads and parses path, or the embedded default when path is empty.
func loadConfig(path string) (*configs.Config, error) {
	data := configs.Default
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, err
		}
	}
	return configs.Parse(data)
}

func printConfigErrors(w io.Writer, path string, err error) {
	if path == "" {
		path = "embedded default"
	}
	errs := field.Flatten(err)
	fmt.Fprintf(w, "vigil: %s: %d error(s):\n", path, len(errs))
	for _, e := range errs {
		fmt.Fprintf(w, "  %v\n", e)
	}
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if _, err := loadConfig(*path); err != nil {
		printConfigErrors(stderr, *path, err)
		return 1
	}
	fmt.Fprintln(stdout, "configuration is valid")
	return 0
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	demo := fs.Bool("demo", false, "also serve the configured loopback instances, failing and recovering on a schedule")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		printConfigErrors(stderr, *path, err)
		return 1
	}
	log := newLogger(stderr, cfg.Log)
	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	a, err := newApp(cfg, log)
	if err != nil {
		log.Error("vigil: start", "err", err)
		return 1
	}
	a.demo = *demo
	a.reload = func() (*configs.Config, error) { return loadConfig(*path) }
	a.hup = hup
	log.Info("vigil: starting", "version", version, "config", orDefault(*path), "upstreams", len(cfg.Upstreams), "demo", *demo)
	// On SIGTERM/SIGINT, drain first (the local service leaves Consul while everything still
	// serves), then stop every part.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	select {
	case <-sig.Done():
		stop() // a second SIGTERM/SIGINT now ends the process at once, cutting a long drain short
		a.drain()
		cancel()
		err = <-errc
	case err = <-errc:
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("vigil: stopped", "err", err)
		return 1
	}
	log.Info("vigil: stopped")
	return 0
}

func orDefault(path string) string {
	if path == "" {
		return "(embedded default)"
	}
	return path
}

func newLogger(w io.Writer, c configs.Log) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
