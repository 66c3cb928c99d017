package testutil

import (
	"net"
	"syscall"
	"testing"
)

// ClosedPort returns a port of 127.0.0.1 on which nothing answers until the test ends, held so
// that no other test can take it: a TCP socket bound to it never listens (connections are
// refused), and a UDP socket bound to it never reads (datagrams go unanswered).
func ClosedPort(t testing.TB) int {
	t.Helper()
	for range 20 { // the UDP port of a free TCP port may be taken: try another
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatalf("closed port: socket: %v", err)
		}
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			syscall.Close(fd)
			t.Fatalf("closed port: bind: %v", err)
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			syscall.Close(fd)
			t.Fatalf("closed port: getsockname: %v", err)
		}
		port := sa.(*syscall.SockaddrInet4).Port
		pc, err := net.ListenPacket("udp4", (&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}).String())
		if err != nil {
			syscall.Close(fd)
			continue
		}
		t.Cleanup(func() { pc.Close(); syscall.Close(fd) })
		return port
	}
	t.Fatal("closed port: no port free for both TCP and UDP in 20 tries")
	return 0
}
