// Package secret holds Secret, a string that never prints its value (ACL and admin tokens).
package secret

import (
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"strconv"
)

// Secret is a string that never prints its value: not with fmt, not as JSON, not in logs.
type Secret string

const redacted = "<redacted>"

// String returns a placeholder, never the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// MarshalJSON encodes a placeholder, never the value.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText encodes a placeholder, never the value (also used by YAML and slog's text handler).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// LogValue logs a placeholder, never the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Reveal returns the value itself; call it only where the value is sent to its peer.
func (s Secret) Reveal() string { return string(s) }

// Equal reports whether s is got, in a time that does not depend on where they differ.
// An empty s equals nothing.
func (s Secret) Equal(got string) bool {
	return s != "" && subtle.ConstantTimeCompare([]byte(s), []byte(got)) == 1
}
