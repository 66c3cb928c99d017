// Package e2e holds vigil's cross-part end-to-end tests: real frontends on one table, real clients.
package e2e
