package health

import "time"

// SetLagHook makes c report the scheduling lag of every probe to f; call it before Run.
func SetLagHook(c *Checker, f func(time.Duration)) { c.lagHook = f }
