// Package tlsfiles loads the certificate files that the backends' URL
// parameters tls_ca, tls_cert and tls_key name into a tls.Config.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Load sets tc.RootCAs from the PEM file caFile and adds the client
// certificate of the PEM files certFile and keyFile. Empty names are
// skipped; certFile and keyFile go together. Errors name the URL parameter
// (tls_ca, tls_cert/tls_key) and the file, never the files' contents.
func Load(tc *tls.Config, caFile, certFile, keyFile string) error {
	if (certFile == "") != (keyFile == "") {
		return errors.New("tls_cert and tls_key go together")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls_ca %q holds no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("tls_cert/tls_key: %w", err)
		}
		tc.Certificates = append(tc.Certificates, cert)
	}
	return nil
}
