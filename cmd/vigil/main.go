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
  vigil status   [-addr HOST:PORT] [-o table|json] [-watch] [NAME]
                 show upstreams and instances from a running vigil (NAME: upstream or instance)
  vigil health   [-addr HOST:PORT] [-path /healthz|/readyz]  exit 0 if a running vigil answers 200
  vigil maint    enable|disable UPSTREAM[/INSTANCE] [-reason TEXT] [-config FILE]  (or: list)
                 maintenance of a running vigil's instance or upstream; needs admin.token_file
  vigil reload   [-reason TEXT] [-config FILE]  a running vigil reads its configuration again (admin token)
  vigil version                           print the version
`

func main() {
	// Catch the signals before anything else: one that arrives while the configuration is read
	// must not kill vigil by its default action (the systemd unit reloads with SIGHUP). cmdRun
	// handles them; the other commands put the default actions back.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	os.Exit(cliSignals(os.Args[1:], os.Stdout, os.Stderr, sigs))
}

// cli runs a command with no signal handling of its own (tests).
func cli(args []string, stdout, stderr io.Writer) int { return cliSignals(args, stdout, stderr, nil) }

// cliSignals runs a command; sigs, if not nil, receives SIGHUP, SIGTERM and SIGINT.
func cliSignals(args []string, stdout, stderr io.Writer, sigs chan os.Signal) int {
	if sigs != nil && (len(args) == 0 || args[0] != "run") {
		signal.Stop(sigs)
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr, sigs)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "health":
		return cmdHealth(args[1:], stdout, stderr)
	case "maint":
		return cmdMaint(args[1:], stdout, stderr)
	case "reload":
		return cmdReload(args[1:], stdout, stderr)
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

// loadConfig reads and parses path, or the embedded default when path is empty, and checks
// the files it names: what run would refuse at start, validate and a reload refuse too.
func loadConfig(path string) (*configs.Config, error) {
	data := configs.Default
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, err
		}
	}
	return configs.Load(data)
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

func cmdRun(args []string, stderr io.Writer, sigs <-chan os.Signal) int {
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
	// Signals that came while the configuration was read: SIGTERM/SIGINT end vigil now, a
	// SIGHUP is kept for the reload loop (it reads the file again once everything runs).
	hup := make(chan os.Signal, 1)
	for pending := true; pending; {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				log.Info("vigil: SIGHUP during start-up: the configuration is read again once running")
				notify(hup, s)
				continue
			}
			log.Info("vigil: stopped before start", "signal", s.String())
			return 0
		default:
			pending = false
		}
	}

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
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				notify(hup, s)
				continue
			}
			// A second SIGTERM/SIGINT now ends the process at once, cutting a long drain short.
			signal.Reset(syscall.SIGTERM, os.Interrupt)
			log.Info("vigil: stopping", "signal", s.String())
			a.drain()
			cancel()
			err = <-errc
		case err = <-errc:
		}
		break
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("vigil: stopped", "err", err)
		return 1
	}
	log.Info("vigil: stopped")
	return 0
}

// notify hands s on to ch without blocking: signals that come faster than they are handled merge.
func notify(ch chan os.Signal, s os.Signal) {
	select {
	case ch <- s:
	default:
	}
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
