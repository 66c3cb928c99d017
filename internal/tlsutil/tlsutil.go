// Package tlsutil loads the certificates and CA pools that vigil's TLS settings name.
package tlsutil

import (
	"crypto/x509"
	"fmt"
	"os"
)

// LoadCAPool reads a PEM file of CA certificates into a pool.
func LoadCAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", file)
	}
	return pool, nil
}

// CheckFile reports whether file can be read, for validation before use.
func CheckFile(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	return f.Close()
}
