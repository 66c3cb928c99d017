package health

import (
	"fmt"
	"net"
	"sync"
	"syscall"
)

// watcher notices, with one epoll set and one goroutine for every instance, when an instance
// closes or resets a probe connection kept idle between probes, so that a crash is probed at once
// rather than at the next interval. Only hang-ups are watched (EPOLLRDHUP, EPOLLHUP, EPOLLERR),
// not data, so a TLS session ticket is not mistaken for a close. A connection is added once, edge
// triggered, and leaves the set when closed: an HTTP probe on a kept connection costs no epoll call.
type watcher struct {
	epfd int
	wake [2]int // a pipe that stops run

	mu      sync.Mutex
	probers map[uint32]*prober
	next    uint32
}

func newWatcher() (*watcher, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	w := &watcher{epfd: epfd, probers: map[uint32]*prober{}}
	if err := syscall.Pipe2(w.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("pipe: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: 0, Pad: 0}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, w.wake[0], &ev); err != nil {
		w.close()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	return w, nil
}

// register gives p a slot for its watches.
func (w *watcher) register(p *prober) uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		w.next++
		if _, used := w.probers[w.next]; w.next != 0 && !used {
			w.probers[w.next] = p
			return w.next
		}
	}
}

// forget frees a slot.
func (w *watcher) forget(id uint32) {
	w.mu.Lock()
	delete(w.probers, id)
	w.mu.Unlock()
}

const watchEvents = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | -syscall.EPOLLET

// watch reports a hang-up of conn to the prober in slot id, with generation gen.
func (w *watcher) watch(conn net.Conn, id, gen uint32) {
	control(conn, func(fd int) {
		ev := syscall.EpollEvent{Events: watchEvents, Fd: int32(id), Pad: int32(gen)}
		_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
	})
}

func control(conn net.Conn, f func(fd int)) {
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { f(int(fd)) })
}

// run delivers hang-ups until stop.
func (w *watcher) run() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			id, gen := uint32(ev.Fd), uint32(ev.Pad)
			if id == 0 {
				return // stop
			}
			w.mu.Lock()
			p := w.probers[id]
			w.mu.Unlock()
			if p != nil {
				p.closed(gen)
			}
		}
	}
}

// stop makes run return.
func (w *watcher) stop() { _, _ = syscall.Write(w.wake[1], []byte{1}) }

// close frees the epoll set; call it after run returned.
func (w *watcher) close() {
	syscall.Close(w.wake[0])
	syscall.Close(w.wake[1])
	syscall.Close(w.epfd)
}
