// Package certgen makes the RSA key and self-signed certificate an app
// registration authenticates with (`oauthbridge cert new`, and tests).
package certgen

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Named defaults of Options.
const (
	// DefaultBits: NIST SP 800-57 rates RSA 3072 good beyond 2030; Entra
	// needs at least 2048.
	DefaultBits = 3072
	// DefaultLifetime: one year, like the portal's default for secrets, so
	// rotation is practised while the person who set it up is still there.
	DefaultLifetime = 365 * 24 * time.Hour
	// MaxLifetime: Entra accepts longer certificate credentials, but a
	// key that never rotates is a key that leaks unnoticed; two years,
	// the maximum of a client secret, is the bridge's ceiling.
	MaxLifetime = 730 * 24 * time.Hour
	// backdate covers clocks a little behind ours (Entra's or another
	// replica's).
	backdate = 5 * time.Minute
)

// Options describe the certificate to make. Zero values take the defaults.
type Options struct {
	CommonName string        // subject CN; required
	Bits       int           // RSA key size; default DefaultBits, at least 2048
	Lifetime   time.Duration // default DefaultLifetime, at most MaxLifetime
	Now        time.Time     // default time.Now()
	// NotBefore, if set, overrides Now-backdate (tests make expired
	// certificates with it).
	NotBefore time.Time
}

// New makes an RSA key and a self-signed certificate for it.
func New(o Options) (*x509.Certificate, *rsa.PrivateKey, error) {
	if o.CommonName == "" {
		return nil, nil, errors.New("certgen: a subject common name is required")
	}
	if o.Bits == 0 {
		o.Bits = DefaultBits
	}
	if o.Bits < 2048 {
		return nil, nil, fmt.Errorf("certgen: %d-bit RSA is too small; Entra needs at least 2048", o.Bits)
	}
	if o.Lifetime == 0 {
		o.Lifetime = DefaultLifetime
	}
	if o.Lifetime < 0 || o.Lifetime > MaxLifetime {
		return nil, nil, fmt.Errorf("certgen: lifetime %v: it must be positive and at most %d days", o.Lifetime, MaxLifetime/(24*time.Hour))
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	nb := o.NotBefore
	if nb.IsZero() {
		nb = o.Now.Add(-backdate)
	}
	key, err := rsa.GenerateKey(rand.Reader, o.Bits)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CommonName},
		NotBefore:             nb.UTC().Truncate(time.Second),
		NotAfter:              o.Now.Add(o.Lifetime).UTC().Truncate(time.Second),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("certgen: parse certificate: %w", err)
	}
	return cert, key, nil
}

// CertPEM encodes cert as a PEM CERTIFICATE block (what Entra's "Upload
// certificate" takes as .pem, .cer or .crt).
func CertPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// KeyPEM encodes key as a PKCS#8 PEM PRIVATE KEY block.
func KeyPEM(key *rsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic("certgen: marshal RSA key: " + err.Error()) // cannot fail for an RSA key
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
