//go:build !linux

package health

import (
	"errors"
	"net"
)

// watcher is only implemented on Linux; elsewhere a crash is noticed at the next probe.
type watcher struct{}

func newWatcher() (*watcher, error) { return nil, errors.New("not supported on this system") }

func (w *watcher) register(*prober) uint32        { return 0 }
func (w *watcher) forget(uint32)                  {}
func (w *watcher) watch(net.Conn, uint32, uint32) {}
func (w *watcher) unwatch(net.Conn)               {}
func (w *watcher) run()                           {}
func (w *watcher) stop()                          {}
func (w *watcher) close()                         {}
