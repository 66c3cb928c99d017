// Package field builds configuration errors that name the field they are about.
package field

import (
	"errors"
	"fmt"
	"strings"
)

// Error is one problem with one configuration field.
type Error struct {
	Path string // e.g. "upstreams[1].check.timeout"
	Msg  string // e.g. "must be less than interval"
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errorf returns an *Error for path with a formatted message.
func Errorf(path, format string, args ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Errors collects field errors; the zero value is ready to use.
type Errors struct{ errs []error }

// Addf records a problem with the field at path.
func (e *Errors) Addf(path, format string, args ...any) {
	e.errs = append(e.errs, Errorf(path, format, args...))
}

// Add records err, a result of a nested Validate, under the prefix path.
func (e *Errors) Add(prefix string, err error) {
	for _, x := range Flatten(err) {
		e.errs = append(e.errs, Prefix(prefix, x))
	}
}

// Err returns the collected errors joined, or nil.
func (e *Errors) Err() error { return errors.Join(e.errs...) }

// Prefix puts prefix in front of the path of a field error, or of err's text.
func Prefix(prefix string, err error) error {
	if prefix == "" || err == nil {
		return err
	}
	var fe *Error
	if errors.As(err, &fe) {
		p := prefix
		if fe.Path != "" {
			if strings.HasPrefix(fe.Path, "[") {
				p += fe.Path
			} else {
				p += "." + fe.Path
			}
		}
		return &Error{Path: p, Msg: fe.Msg}
	}
	return &Error{Path: prefix, Msg: err.Error()}
}

// Flatten returns the leaves of a tree of joined errors.
func Flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Flatten(e)...)
		}
		return out
	}
	return []error{err}
}
