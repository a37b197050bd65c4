package main

// The "pki" subcommand: the certificates and keys a throw-away control plane needs, made
// with Go's standard library (ECDSA P-256, valid for a week), in the layout up.sh expects.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// A leaf to issue: its file name (NAME.crt, NAME.key), subject, and what it is for.
type leaf struct {
	name   string
	cn     string
	orgs   []string
	ips    []net.IP
	dns    []string
	server bool
}

func pki(args []string) int {
	fs := flag.NewFlagSet("pki", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to write the certificates and keys into (created)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: pki --dir DIR

Writes into DIR (PEM, ECDSA P-256, valid 7 days):
  ca.crt ca.key                serving CA: signs apiserver and webhook
  apiserver.crt apiserver.key  kube-apiserver serving (127.0.0.1, localhost, kubernetes.default, 10.0.0.1)
  webhook.crt webhook.key      rayshape-webhook serving (127.0.0.1, localhost)
  client-ca.crt client-ca.key  client CA (--client-ca-file)
  front-proxy-ca.crt/.key      front-proxy (aggregation layer) client CA
  front-proxy-client.crt/.key  CN=front-proxy-client
  admin.crt admin.key          CN=admin, O=system:masters
  kube-controller-manager.crt/.key  CN=system:kube-controller-manager
  kube-scheduler.crt/.key      CN=system:kube-scheduler
  sa.key sa.pub                service-account token signing key pair
`)
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	if err := writePKI(*dir); err != nil {
		fmt.Fprintf(os.Stderr, "pki: %v\n", err)
		return 1
	}
	return 0
}

func writePKI(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	serving, err := newCA("rayshape-test-serving-ca")
	if err != nil {
		return err
	}
	client, err := newCA("rayshape-test-client-ca")
	if err != nil {
		return err
	}
	frontProxy, err := newCA("rayshape-test-front-proxy-ca")
	if err != nil {
		return err
	}
	for name, ca := range map[string]keyPair{"ca": serving, "client-ca": client, "front-proxy-ca": frontProxy} {
		if err := writePair(dir, name, ca); err != nil {
			return err
		}
	}
	servers := []leaf{
		{name: "apiserver", cn: "kube-apiserver", server: true,
			ips: append(loopback, net.ParseIP("10.0.0.1")),
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{name: "webhook", cn: "rayshape-webhook", server: true, ips: loopback, dns: []string{"localhost"}},
	}
	clients := []leaf{
		{name: "admin", cn: "admin", orgs: []string{"system:masters"}},
		{name: "kube-controller-manager", cn: "system:kube-controller-manager"},
		{name: "kube-scheduler", cn: "system:kube-scheduler"},
	}
	for _, l := range servers {
		if err := issue(dir, l, serving); err != nil {
			return err
		}
	}
	for _, l := range clients {
		if err := issue(dir, l, client); err != nil {
			return err
		}
	}
	// kube-apiserver's identity towards aggregated API servers (and what components that
	// delegate authentication read from kube-system/extension-apiserver-authentication).
	if err := issue(dir, leaf{name: "front-proxy-client", cn: "front-proxy-client"}, frontProxy); err != nil {
		return err
	}
	// The service-account signer: a bare key pair (kube-apiserver reads the public key from
	// --service-account-key-file and signs with --service-account-signing-key-file).
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), sa); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func newCA(cn string) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	sn, err := serial()
	if err != nil {
		return keyPair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return keyPair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	return keyPair{cert: cert, key: key}, err
}

func issue(dir string, l leaf, ca keyPair) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		IPAddresses:  l.ips,
		DNSNames:     l.dns,
	}
	if l.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("issuing %s: %w", l.name, err)
	}
	if err := writePEM(filepath.Join(dir, l.name+".crt"), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, l.name+".key"), key)
}

func writePair(dir, name string, kp keyPair) error {
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", kp.cert.Raw, 0o644); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, name+".key"), kp.key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
