package chaos

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Fault kinds, as the report names them.
const (
	faultKill          = "instance killed (SIGKILL)"
	faultHang          = "instance hung (SIGSTOP)"
	faultLeader        = "Consul leader killed"
	faultConsulDown    = "all of Consul stopped"
	faultVigilTerm     = "vigil restarted (SIGTERM)"
	faultVigilKill     = "vigil restarted (SIGKILL)"
	faultVigilNoConsul = "vigil restarted while Consul is down"
	faultCorruptState  = "state file corrupted, vigil restarted"
)

// instanceFaults kills or hangs one instance at a time, never the last live one of its kind,
// holds the fault for a while (often past the detection window) and revives it.
func (j *injector) instanceFaults(ctx context.Context) error {
	for n := 0; sleep(ctx, j.between(300*time.Millisecond, 1500*time.Millisecond)); n++ {
		in := j.ins[j.intn(len(j.ins))]
		hang := j.intn(2) == 0
		if n < 2 { // a kill and a hang first, however short the run
			hang = n == 1
		}
		if hang {
			j.m.fault(faultHang)
			j.m.setAlive(in, false)
			if err := in.signal(syscall.SIGSTOP); err != nil {
				return err
			}
		} else {
			j.m.fault(faultKill)
			j.m.setAlive(in, false)
			in.stop(syscall.SIGKILL, time.Second)
		}
		if !sleep(ctx, j.between(time.Second, 2*j.cfg.Window)) {
			return nil // healAll revives it
		}
		if err := j.revive(ctx, in); err != nil {
			return err
		}
	}
	return nil
}

// revive brings a killed or hung instance back.
func (j *injector) revive(ctx context.Context, in *instance) error {
	if in.alive {
		return nil
	}
	if in.running() {
		if err := in.signal(syscall.SIGCONT); err != nil {
			return err
		}
		j.m.setAlive(in, true)
		return nil
	}
	return j.startInstance(context.WithoutCancel(ctx), in)
}

// controlFaults goes through every control-plane fault in a random order, again and again:
// Consul's leader killed, all of Consul stopped, vigil restarted in each way.
func (j *injector) controlFaults(ctx context.Context) error {
	faults := []string{faultLeader, faultConsulDown, faultVigilTerm, faultVigilKill, faultVigilNoConsul, faultCorruptState}
	// The first round is always complete, however short the run: every kind is injected once.
	rctx := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		j.rngMu.Lock()
		j.rng.Shuffle(len(faults), func(a, b int) { faults[a], faults[b] = faults[b], faults[a] })
		j.rngMu.Unlock()
		for _, f := range faults {
			if !sleep(rctx, j.between(500*time.Millisecond, 2*time.Second)) {
				return nil
			}
			j.m.fault(f)
			if err := j.control(rctx, f); err != nil {
				return err
			}
		}
		rctx = ctx
	}
	return nil
}

func (j *injector) control(ctx context.Context, f string) error {
	switch f {
	case faultLeader:
		leader, err := j.leader(ctx)
		if err != nil {
			return err
		}
		leader.stop(syscall.SIGKILL, time.Second)
		sleep(ctx, j.between(2*time.Second, 5*time.Second))
		if err := leader.start(); err != nil {
			return err
		}
		return j.waitConsul(context.WithoutCancel(ctx), 60*time.Second)
	case faultConsulDown:
		j.stopConsul()
		sleep(ctx, j.between(3*time.Second, 8*time.Second))
		return j.startConsul(ctx)
	case faultVigilTerm, faultVigilKill:
		sig := syscall.SIGTERM
		if f == faultVigilKill {
			sig = syscall.SIGKILL
		}
		return j.restartVigil(ctx, sig, nil)
	case faultVigilNoConsul:
		j.stopConsul()
		sleep(ctx, 500*time.Millisecond)
		if err := j.restartVigil(ctx, syscall.SIGKILL, nil); err != nil {
			return err
		}
		sleep(ctx, j.between(2*time.Second, 5*time.Second))
		return j.startConsul(ctx)
	case faultCorruptState:
		return j.restartVigil(ctx, syscall.SIGKILL, func() error {
			return os.WriteFile(j.vigil.state, []byte(`{"groups": {"consul/keepalive": {"instances": [{"health": "bogus"`), 0o644)
		})
	}
	return fmt.Errorf("chaos: unknown fault %q", f)
}

// restartVigil stops vigil with sig, runs between (if any) while it is down, and starts it again.
func (j *injector) restartVigil(ctx context.Context, sig syscall.Signal, between func() error) error {
	j.m.setVigilReady(false)
	j.vigil.stop(sig, 15*time.Second)
	if between != nil {
		if err := between(); err != nil {
			return err
		}
	}
	return j.startVigil(context.WithoutCancel(ctx))
}

// leader is the Consul server that is the raft leader now.
func (j *injector) leader(ctx context.Context) (*consulAgent, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	var addr string
	url := "http://" + net.JoinHostPort(clientIP, strconv.Itoa(consulHTTP)) + "/v1/status/leader"
	if err := getJSON(ctx, hc, url, &addr); err != nil {
		return nil, fmt.Errorf("chaos: leader: %w", err)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("chaos: leader %q: %w", addr, err)
	}
	for _, s := range j.servers {
		if s.ip == host {
			return s, nil
		}
	}
	return nil, fmt.Errorf("chaos: leader %q is none of the servers", addr)
}

func (j *injector) stopConsul() {
	j.client.stop(syscall.SIGKILL, time.Second)
	for _, s := range j.servers {
		s.stop(syscall.SIGKILL, time.Second)
	}
}

// startConsul starts every stopped agent, waits for a leader, and checks that vigil's own
// registration is passing again within cfg.Recovered.
func (j *injector) startConsul(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	for _, a := range append(append([]*consulAgent(nil), j.servers...), j.client) {
		if !a.running() {
			if err := a.start(); err != nil {
				return err
			}
		}
	}
	if err := j.waitConsul(ctx, 90*time.Second); err != nil {
		return err
	}
	return j.checkRegistration(ctx)
}

// checkRegistration checks that the local service is registered and passing in Consul within
// cfg.Recovered (vigil registers it again when the agent lost it, and keeps its TTL check fresh).
func (j *injector) checkRegistration(ctx context.Context) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(j.cfg.Recovered)
	j.m.count("local registration passing after Consul recovery")
	var last string
	for time.Now().Before(deadline) {
		st, err := localRegistration(ctx, hc)
		if err == nil && st == "passing" {
			return nil
		}
		last = st
		if err != nil {
			last = err.Error()
		}
		sleep(ctx, 100*time.Millisecond)
	}
	j.m.violate("local registration not restored", "still %q %s after Consul came back", last, j.cfg.Recovered)
	return nil
}

// healAll ends every fault, waits out the detection window while still observed, and checks the
// local registration one last time.
func (j *injector) healAll(ctx context.Context) error {
	for _, in := range j.ins {
		if err := j.revive(ctx, in); err != nil {
			return err
		}
	}
	if !j.vigil.running() {
		if err := j.startVigil(ctx); err != nil {
			return err
		}
	}
	if err := j.startConsul(ctx); err != nil {
		return err
	}
	sleep(ctx, j.cfg.Window+j.cfg.Grace)
	return nil
}
