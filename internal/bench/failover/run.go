package failover

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"
)

// Config is one benchmark run.
type Config struct {
	Paths   []Path
	Env     Env
	Kills   int           // SIGKILLs per backend kind
	Stops   int           // SIGSTOPs per backend kind
	Rate    int           // requests per second of each client
	Dead    time.Duration // how long a killed or stopped instance stays down
	Backend string        // the Go backend binary
}

// record is one request of a client.
type record struct {
	at      time.Duration // sent, since the run's start
	offered uint8
	sent    int8
	failed  bool
}

// Event is one kill or hang of an instance.
type Event struct {
	Kind Kind
	Inst int
	Hang bool          // SIGSTOP, else SIGKILL
	At   time.Duration // signalled, since the run's start
	Back time.Duration // revived: SIGCONT sent, or the new process accepts connections
	End  time.Duration // the kind's next event, or the run's end
}

// series are the requests of one client: a path and a kind.
type series struct {
	path string
	kind Kind
	// unattributed: a failed request with no known instance is counted against the event's.
	unattributed bool
	mu           sync.Mutex
	recs         []record
}

// Result is what a run measured.
type Result struct {
	Paths    []string
	Events   [numKinds][]Event
	Series   []*series
	Duration time.Duration
	Rate     int
}

// Run starts the instances and the paths, sends requests through every path at the configured
// rate, kills and hangs instances of every kind at random moments, and returns what it saw.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	env := &cfg.Env
	defer func() {
		for k := range numKinds {
			for _, in := range env.Instances[k] {
				if in.cmd != nil {
					_ = in.Kill()
				}
			}
		}
	}()
	for k := range numKinds {
		ins, err := newInstances(k, cfg.Backend, env.Dir)
		if err != nil {
			return nil, err
		}
		env.Instances[k] = ins
		for _, in := range ins {
			if err := in.Start(ctx); err != nil {
				return nil, err
			}
		}
	}
	res := &Result{Rate: cfg.Rate}
	for _, p := range cfg.Paths {
		env.Logf("starting %s", p.Name())
		if err := p.Start(ctx, env); err != nil {
			p.Close()
			return nil, fmt.Errorf("%s: %w", p.Name(), err)
		}
		defer p.Close()
		res.Paths = append(res.Paths, p.Name())
	}

	start := time.Now()
	since := func() time.Duration { return time.Since(start) }
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var load sync.WaitGroup
	for _, p := range cfg.Paths {
		for k := range numKinds {
			if !p.Carries(k) {
				continue
			}
			c, err := p.Client(k)
			if err != nil {
				return nil, fmt.Errorf("%s: client: %w", p.Name(), err)
			}
			s := &series{path: p.Name(), kind: k}
			if u, ok := p.(interface{ Unattributed() bool }); ok {
				s.unattributed = u.Unattributed()
			}
			res.Series = append(res.Series, s)
			load.Go(func() { drive(lctx, c, s, cfg.Rate, since) })
		}
	}

	time.Sleep(2 * time.Second) // warm up
	var chaos sync.WaitGroup
	errs := make(chan error, numKinds)
	for k := range numKinds {
		chaos.Go(func() {
			evs, err := havoc(ctx, cfg, env, k, res, since)
			res.Events[k] = evs
			errs <- err
		})
	}
	chaos.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return nil, err
		}
	}
	time.Sleep(time.Second)
	stopLoad()
	load.Wait()
	res.Duration = since()
	for k := range numKinds {
		for i := range res.Events[k] {
			if i+1 < len(res.Events[k]) {
				res.Events[k][i].End = res.Events[k][i+1].At
			} else {
				res.Events[k][i].End = res.Duration
			}
		}
	}
	return res, nil
}

// drive sends requests through c at rate per second until ctx ends, each on its own goroutine
// (at most 512 in flight: a tick beyond that counts as a failed request).
func drive(ctx context.Context, c Client, s *series, rate int, since func() time.Duration) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sem := make(chan struct{}, 512)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		at := since()
		select {
		case sem <- struct{}{}:
		default:
			s.add(record{at: at, sent: -1, failed: true})
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			off, sent, err := c.Do(context.WithoutCancel(ctx))
			s.add(record{at: at, offered: off, sent: int8(sent), failed: err != nil})
		})
	}
}

func (s *series) add(r record) {
	s.mu.Lock()
	s.recs = append(s.recs, r)
	s.mu.Unlock()
}

// offeredAll reports whether, in the last window, every request of s was offered all instances.
func (s *series) offeredAll(now, window time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var seen uint8
	n := 0
	for i := len(s.recs) - 1; i >= 0 && s.recs[i].at > now-window; i-- {
		seen |= s.recs[i].offered
		n++
	}
	return n > 0 && seen == 7
}

// havoc kills and stops instances of kind k, one at a time, in a random order of events.
func havoc(ctx context.Context, cfg Config, env *Env, k Kind, res *Result, since func() time.Duration) ([]Event, error) {
	plan := make([]bool, 0, cfg.Kills+cfg.Stops)
	for i := range cfg.Kills + cfg.Stops {
		plan = append(plan, i >= cfg.Kills)
	}
	rand.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	var evs []Event
	for _, hang := range plan {
		// Every path that carries k offers all three instances again.
		deadline := time.Now().Add(20 * time.Second)
		for {
			ready := true
			for _, s := range res.Series {
				if s.kind == k && !s.offeredAll(since(), 300*time.Millisecond) {
					ready = false
				}
			}
			if ready {
				break
			}
			if time.Now().After(deadline) {
				env.Logf("%s: not every path offers every instance after 20s; going on", k)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(500*time.Millisecond + rand.N(time.Second))
		if ctx.Err() != nil {
			return evs, ctx.Err()
		}
		in := env.Instances[k][rand.N(3)]
		ev := Event{Kind: k, Inst: in.Index, Hang: hang, At: since()}
		var err error
		if hang {
			err = in.Signal(syscall.SIGSTOP)
		} else {
			err = in.Kill()
		}
		if err != nil {
			return evs, fmt.Errorf("failover: %s: %w", in.ID, err)
		}
		time.Sleep(cfg.Dead)
		if hang {
			err = in.Signal(syscall.SIGCONT)
			ev.Back = since()
		} else {
			err = in.Start(ctx)
			ev.Back = since()
		}
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
	return evs, nil
}
