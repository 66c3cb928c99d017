package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-sidecar/vigil/proxy/admin"
)

// statusOpts are the parsed flags of `vigil status`.
type statusOpts struct {
	addr   string
	output string // table or json
	watch  bool
	name   string // an upstream, an instance ID or UPSTREAM/ID; empty for all
	color  bool
	tty    bool
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	return runStatus(context.Background(), args, stdout, stderr)
}

// runStatus runs `vigil status` until it has printed (or, with -watch, until ctx ends).
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := statusOpts{}
	fs.StringVar(&o.addr, "addr", "127.0.0.1:9480", "admin address of the running vigil")
	fs.StringVar(&o.output, "o", "table", "output format: table or json")
	fs.BoolVar(&o.watch, "watch", false, "redraw on every change, from the admin's event stream (GET /v1/events)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: vigil status [-addr HOST:PORT] [-o table|json] [-watch] [UPSTREAM | INSTANCE | UPSTREAM/INSTANCE]")
		fs.PrintDefaults()
	}
	// Flags may follow NAME too: vigil status web -watch.
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(rest) > 1 || (o.output != "table" && o.output != "json") {
		fs.Usage()
		return 2
	}
	if len(rest) == 1 {
		o.name = rest[0]
	}
	o.tty = isTerminal(stdout)
	o.color = o.tty && os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb"

	if o.watch {
		return watchStatus(ctx, &o, stdout, stderr)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var tab admin.Table
	if err := getJSON(ctx, "http://"+o.addr+"/v1/upstreams", &tab); err != nil {
		fmt.Fprintf(stderr, "vigil: status: %v\n", err)
		return 1
	}
	frame, err := renderStatus(&tab, &o)
	if err != nil {
		fmt.Fprintf(stderr, "vigil: status: %v\n", err)
		return 1
	}
	stdout.Write(frame)
	return 0
}

// watchStatus redraws the status after each event of the admin's event stream whose rendering
// differs from the last one, and reconnects when the stream ends, until ctx ends.
func watchStatus(ctx context.Context, o *statusOpts, stdout, stderr io.Writer) int {
	url := "http://" + o.addr + "/v1/events"
	var last []byte
	for ctx.Err() == nil {
		err := readEvents(ctx, url, func(data []byte) error {
			var tab admin.Table
			if err := json.Unmarshal(data, &tab); err != nil {
				return fmt.Errorf("event: %w", err)
			}
			frame, err := renderStatus(&tab, o)
			if err != nil {
				return err
			}
			if bytes.Equal(frame, last) {
				return nil
			}
			last = frame
			if o.tty {
				io.WriteString(stdout, "\x1b[H\x1b[2J") // home, clear
				stdout.Write(frame)
				fmt.Fprintf(stdout, "\nwatching %s (Ctrl-C to stop)\n", url)
				return nil
			}
			_, err = stdout.Write(append(frame, '\n'))
			return err
		})
		if ctx.Err() != nil {
			break
		}
		var nf *notFound
		if errors.As(err, &nf) {
			fmt.Fprintf(stderr, "vigil: status: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "vigil: status: %v; reconnecting\n", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return 0
}

// readEvents calls f with the data of each "table" event of the server-sent event stream at url.
func readEvents(ctx context.Context, url string, f func([]byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseSSE(resp.Body, func(event string, data []byte) error {
		if event != "table" {
			return nil
		}
		return f(data)
	})
}

// parseSSE reads a text/event-stream and calls f with each event's name and data.
func parseSSE(r io.Reader, f func(event string, data []byte) error) error {
	rd := bufio.NewReader(r)
	event, data := "", []byte(nil)
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			if err == io.EOF {
				return errors.New("event stream ended")
			}
			return err
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		switch {
		case len(line) == 0:
			if data != nil {
				if event == "" {
					event = "message"
				}
				if err := f(event, data); err != nil {
					return err
				}
			}
			event, data = "", nil
		case line[0] == ':': // comment, e.g. keep-alive
		default:
			k, v, _ := bytes.Cut(line, []byte(":"))
			v = bytes.TrimPrefix(v, []byte(" "))
			switch string(k) {
			case "event":
				event = string(v)
			case "data":
				if data == nil {
					data = []byte{}
				} else {
					data = append(data, '\n')
				}
				data = append(data, v...)
			}
		}
	}
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
