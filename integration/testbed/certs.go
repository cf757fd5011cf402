package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Certs is a throwaway certificate authority and a server certificate for
// 127.0.0.1 and localhost, written to a directory by WriteCerts:
//
//	ca.crt      the CA certificate (PEM)
//	server.crt  the server certificate (PEM)
//	server.key  the server's unencrypted PKCS#8 private key (PEM)
//	server.pem  server.key, server.crt and ca.crt in one file (Kafka's PEM keystore)
type Certs struct {
	// Dir holds the files; it is readable by the broker containers that
	// mount it (WithKafkaTLS, WithRedisTLS).
	Dir string
	// CAFile is Dir/ca.crt, for clients to trust.
	CAFile string
}

// WriteCerts makes a new CA named caName and a server certificate signed by
// it, valid for a day, in a temporary directory removed when t ends.
func WriteCerts(t testing.TB, caName string) Certs {
	t.Helper()
	fail := func(err error) {
		if err != nil {
			t.Fatalf("testbed: certificates: %v", err)
		}
	}
	dir := t.TempDir()
	fail(os.Chmod(dir, 0o755))
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fail(err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: caName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	fail(err)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fail(err)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	fail(err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	fail(err)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	crtPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for name, b := range map[string][]byte{
		"ca.crt": caPEM, "server.crt": crtPEM, "server.key": keyPEM,
		"server.pem": append(append(append([]byte{}, keyPEM...), crtPEM...), caPEM...),
	} {
		// World-readable: the broker in the container runs as its own user.
		fail(os.WriteFile(filepath.Join(dir, name), b, 0o644))
	}
	return Certs{Dir: dir, CAFile: filepath.Join(dir, "ca.crt")}
}
