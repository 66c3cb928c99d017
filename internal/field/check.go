package field

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
)

// NameRE is what vigil accepts as an upstream or service name: a DNS label in lower case.
var NameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// HostPort checks a listen or dial address: an IP address and a port (0 only with allowZero).
func HostPort(addr string, allowZero bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !allowZero) {
		return fmt.Errorf("%q has no valid port", addr)
	}
	if net.ParseIP(host) == nil {
		return fmt.Errorf("%q: host must be an IP address", addr)
	}
	return nil
}
