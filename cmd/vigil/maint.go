package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/proxy/admin"
)

const reloadUsage = "usage: vigil reload [-reason TEXT] [-actor NAME] [-config FILE | -addr HOST:PORT -token-file FILE]"

const maintUsage = "usage: vigil maint enable|disable UPSTREAM[/INSTANCE] [-reason TEXT] [-actor NAME] [-config FILE | -addr HOST:PORT -token-file FILE]\n       vigil maint list [-config FILE | -addr HOST:PORT -token-file FILE]"

// controlFlags are the flags of the commands that call the control endpoints.
type controlFlags struct {
	addr, tokenFile, actor, reason *string
	config                         *string
	fs                             *flag.FlagSet
}

func newControlFlags(fs *flag.FlagSet) controlFlags {
	return controlFlags{
		addr:      fs.String("addr", "127.0.0.1:9480", "admin address of the running vigil"),
		tokenFile: fs.String("token-file", "", "file holding the admin token (default: the VIGIL_TOKEN environment variable)"),
		actor:     fs.String("actor", os.Getenv("USER"), "who asks, for vigil's log (X-Vigil-Actor)"),
		reason:    fs.String("reason", "", "why, for vigil's log and the maintenance record"),
		config:    fs.String("config", "", "read -addr (admin.listen) and -token-file (admin.token_file) from this configuration"),
		fs:        fs,
	}
}

// fromConfig fills in -addr and -token-file from -config, unless they are given.
func (f controlFlags) fromConfig() error {
	if f.config == nil || *f.config == "" {
		return nil
	}
	b, err := os.ReadFile(*f.config)
	if err != nil {
		return err
	}
	cfg, err := configs.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", *f.config, err)
	}
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if !set["addr"] {
		*f.addr = cfg.Admin.Listen
	}
	if !set["token-file"] && cfg.Admin.TokenFile != "" {
		*f.tokenFile = cfg.Admin.TokenFile
	}
	return nil
}

// parseInterleaved parses fs from args, allowing flags after the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// call sends one control request and decodes the JSON answer into out; it returns the status code.
func (f controlFlags) call(method, path string, out any) (int, error) {
	if err := f.fromConfig(); err != nil {
		return 0, err
	}
	tok := os.Getenv("VIGIL_TOKEN")
	if *f.tokenFile != "" {
		b, err := os.ReadFile(*f.tokenFile)
		if err != nil {
			return 0, err
		}
		tok = string(b)
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return 0, errors.New("no token: give -token-file, or -config with admin.token_file set, or set VIGIL_TOKEN (the running vigil needs admin.token_file: without it runtime control is off)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, _ := json.Marshal(map[string]string{"reason": *f.reason})
	req, err := http.NewRequestWithContext(ctx, method, "http://"+*f.addr+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	if *f.actor != "" {
		req.Header.Set("X-Vigil-Actor", *f.actor)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnprocessableEntity {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error)
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return resp.StatusCode, json.Unmarshal(b, out)
}

// cmdMaint puts an upstream or one instance into maintenance, takes it out, or lists them.
func cmdMaint(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("maint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, maintUsage); fs.PrintDefaults() }
	f := newControlFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) == 1 && pos[0] == "list" {
		var res struct{ Holds []holdJSON }
		if _, err := f.call(http.MethodGet, "/v1/maint", &res); err != nil {
			fmt.Fprintf(stderr, "vigil: maint: %v\n", err)
			return 1
		}
		for _, h := range res.Holds {
			fmt.Fprintf(stdout, "%s\tsince %s\tby %s\t%s\n", h.target(), h.Since.Format(time.RFC3339), h.Actor, h.Reason)
		}
		return 0
	}
	if len(pos) != 2 || (pos[0] != "enable" && pos[0] != "disable") || pos[1] == "" {
		fmt.Fprintln(stderr, maintUsage)
		return 2
	}
	up, inst, _ := strings.Cut(pos[1], "/")
	path := "/v1/maint/" + url.PathEscape(up)
	if inst != "" {
		path += "/" + url.PathEscape(inst)
	}
	method := http.MethodPut
	if pos[0] == "disable" {
		method = http.MethodDelete
	}
	var res admin.MaintResult
	if _, err := f.call(method, path, &res); err != nil {
		fmt.Fprintf(stderr, "vigil: maint: %v\n", err)
		return 1
	}
	state := "in maintenance (not served; xDS DRAINING)"
	if !res.Maintenance {
		state = "out of maintenance"
	}
	fmt.Fprintf(stdout, "%s: %s\n", res.Target, state)
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "vigil: maint: warning: %s\n", w)
	}
	return 0
}

type holdJSON struct {
	Upstream, Instance, Reason, Actor string
	Since                             time.Time
}

func (h holdJSON) target() string {
	if h.Instance == "" {
		return h.Upstream
	}
	return h.Upstream + "/" + h.Instance
}

// cmdReload asks a running vigil to read its configuration again (POST /v1/reload).
func cmdReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, reloadUsage); fs.PrintDefaults() }
	f := newControlFlags(fs)
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) > 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	var res admin.ReloadResult
	code, err := f.call(http.MethodPost, "/v1/reload", &res)
	if err != nil {
		fmt.Fprintf(stderr, "vigil: reload: %v\n", err)
		return 1
	}
	if code != http.StatusOK {
		fmt.Fprintf(stderr, "vigil: %s\n", res.Message)
		for _, e := range res.Errors {
			fmt.Fprintf(stderr, "  %s\n", e)
		}
		return 1
	}
	fmt.Fprintln(stdout, res.Message)
	return 0
}
