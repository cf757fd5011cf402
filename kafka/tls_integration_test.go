package kafka_test

import (
	"context"
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
	"strings"
	"testing"
	"time"

	"github.com/mqkit/mq"
	"github.com/mqkit/mq/integration/testbed"
)

// TestKafkaTLS produces and consumes over a real broker's TLS listener with
// certificates made by the test, and checks that a client trusting another
// CA fails with a clear certificate error.
func TestKafkaTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Kafka broker; skipped with -short")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caPEM, serverPEM := makeCerts(t, "mq test CA")
	otherCA, _ := makeCerts(t, "some other CA")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("server.pem", serverPEM)
	caFile := write("ca.pem", caPEM)
	otherFile := write("other-ca.pem", otherCA)

	b := testbed.Kafka(t, testbed.WithKafkaTLS(dir))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c, err := mq.Open(ctx, "kafka://"+b.TLSAddr+"/?create_topics=true&tls_ca="+caFile)
	if err != nil {
		t.Fatalf("open over TLS: %v\n%s", err, b.Logs(ctx))
	}
	defer c.Close()
	topic := "tls-" + mq.NewID()
	cons, err := c.Consumer(ctx, topic, mq.WithGroup("g"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Producer().Produce(ctx, topic, &mq.Message{ID: "over-tls", Body: []byte("secret order")}); err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	var got string
	_ = cons.Consume(cctx, mq.HandlerFunc(func(_ context.Context, m *mq.Message) error {
		got = m.ID + ":" + string(m.Body)
		stop()
		return nil
	}))
	if got != "over-tls:secret order" {
		t.Fatalf("consumed %q over TLS", got)
	}

	_, err = mq.Open(ctx, "kafka://"+b.TLSAddr+"/?dial_timeout=5s&tls_ca="+otherFile)
	if err == nil {
		t.Fatal("a client trusting another CA connected")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA error does not mention the certificate: %v", err)
	}
	t.Logf("wrong CA: %v", err)
}

// makeCerts returns a new CA certificate and a server PEM (PKCS#8 key,
// then the server certificate for 127.0.0.1 and localhost, then the CA).
func makeCerts(t *testing.T, caName string) (caPEM, serverPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: caName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	serverPEM = append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})...)
	serverPEM = append(serverPEM, caPEM...)
	return caPEM, serverPEM
}
