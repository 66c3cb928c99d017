package xds

import (
	"strconv"
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/proxy/table"
)

// changeMark is a health state change on its way to the clients: set by the push that carries it.
type changeMark struct {
	seq uint64
	at  time.Time // the probe result that made it
}

// ackState follows one stream's responses that carry a change until the client acknowledges one.
type ackState struct {
	mu       sync.Mutex
	opened   time.Time
	nonces   map[string]*changeMark // responses sent after a change, not yet answered
	observed uint64                 // the newest change seen acknowledged on this stream
}

// maxPendingNonces bounds ackState.nonces (a client answers each response; one that does not
// leaves its nonces, which are dropped).
const maxPendingNonces = 16

func ackKey(api string, id int64) string { return api + "/" + strconv.FormatInt(id, 10) }

// markChange records, before the push that carries it updates the caches, the newest state change
// of snap, if no push carried it yet. Called by the push loop only.
func (s *Server) markChange(c table.Change) {
	if c.Seq == 0 || c.Seq == s.markedSeq {
		return
	}
	s.markedSeq = c.Seq
	s.change.Store(&changeMark{seq: c.Seq, at: c.At})
}

func (s *Server) ackOpened(api string, id int64) {
	s.acks.Store(ackKey(api, id), &ackState{opened: time.Now(), nonces: map[string]*changeMark{}})
}

func (s *Server) ackClosed(api string, id int64) { s.acks.Delete(ackKey(api, id)) }

// ackSent notes that the response with nonce was sent after the newest change: a stream opened
// after the probe result that made it, or that has acknowledged it already, is not followed.
func (s *Server) ackSent(api string, id int64, nonce string) {
	c := s.change.Load()
	if c == nil || nonce == "" {
		return
	}
	v, ok := s.acks.Load(ackKey(api, id))
	if !ok {
		return
	}
	st := v.(*ackState)
	st.mu.Lock()
	defer st.mu.Unlock()
	if c.seq <= st.observed || c.at.Before(st.opened) {
		return
	}
	if len(st.nonces) >= maxPendingNonces {
		clear(st.nonces)
	}
	st.nonces[nonce] = c
}

// ackAnswered handles a request answering the response with nonce: an acknowledgement (no error)
// of one that carried a change not yet observed on the stream observes the time since the change.
func (s *Server) ackAnswered(api string, id int64, nonce string, nack bool) {
	if nonce == "" {
		return
	}
	v, ok := s.acks.Load(ackKey(api, id))
	if !ok {
		return
	}
	st := v.(*ackState)
	st.mu.Lock()
	c := st.nonces[nonce]
	delete(st.nonces, nonce)
	observe := c != nil && !nack && c.seq > st.observed
	if observe {
		st.observed = c.seq
	}
	st.mu.Unlock()
	if observe {
		s.m.changeToAck.Observe(time.Since(c.at).Seconds())
	}
}
