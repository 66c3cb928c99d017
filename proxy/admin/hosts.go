package admin

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// guardHosts refuses requests whose Host, or Origin when a browser sends one, is a name that
// is not known to be this vigil: a web page can resolve its own name to 127.0.0.1 (DNS
// rebinding) and read the admin API through the victim's browser; such a request carries the
// page's name in Host. Allowed are IP literals (no name to rebind), "localhost" and names under
// ".localhost", the host of admin.listen, and admin.allowed_hosts. A cross-origin Origin (one
// that is not the request's own scheme://host) is refused too.
func guardHosts(allowed []string, next http.Handler) http.Handler {
	names := map[string]bool{}
	for _, h := range allowed {
		names[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	ok := func(host string) bool {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
		if host == "" {
			return false
		}
		if net.ParseIP(host) != nil || host == "localhost" || strings.HasSuffix(host, ".localhost") {
			return true
		}
		return names[host]
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ok(r.Host) {
			http.Error(w, "admin: host "+r.Host+" is not allowed (admin.allowed_hosts)", http.StatusForbidden)
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			u, err := url.Parse(o)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
				http.Error(w, "admin: cross-origin requests are not allowed", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
