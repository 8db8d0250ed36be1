package config

import (
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Certificate credentials (client_certificate blocks of a provider).
const (
	// DefaultCertAlgorithm signs the client assertion. RS256 (PKCS#1 v1.5
	// with SHA-256) is what every Entra client library has sent for years
	// and what ADFS accepts too; PS256 (RSASSA-PSS, which Microsoft's .NET
	// library now prefers against Entra) is chosen with algorithm = "PS256".
	DefaultCertAlgorithm = "RS256"
	// MaxClientCertificates: the certificate in use and its successor,
	// uploaded before the old one expires.
	MaxClientCertificates = 2
	// MinRSAKeyBits is the smallest key Entra accepts for a certificate
	// credential.
	MinRSAKeyBits = 2048
)

// ClientCertificate is one client_certificate block: a certificate the app
// registration knows (uploaded in Entra) and its RSA private key. The
// bridge authenticates with a signed client assertion (RFC 7523,
// private_key_jwt) instead of a client secret.
type ClientCertificate struct {
	CertFile  string `hcl:"cert_file"`
	KeyFile   string `hcl:"key_file"`
	Algorithm string `hcl:"algorithm,optional"` // RS256 (default) | PS256

	DefRange  hcl.Range `hcl:",def_range"`
	CertRange hcl.Range `hcl:"cert_file,attr_range"`
	KeyRange  hcl.Range `hcl:"key_file,attr_range"`
	AlgRange  hcl.Range `hcl:"algorithm,attr_range"`

	// Derived by validation. Cert is nil when cert_file could not be read,
	// Key when key_file could not (both only with Options.DeferSecrets,
	// for admin commands that do not sign anything).
	Cert *x509.Certificate
	Key  *rsa.PrivateKey
}

// Thumbprint is the certificate's SHA-1 thumbprint in upper-case hex, as the
// Entra admin center shows it under Certificates & secrets.
func (c *ClientCertificate) Thumbprint() string {
	if c.Cert == nil {
		return ""
	}
	return CertThumbprint(c.Cert)
}

// CertThumbprint is cert's SHA-1 thumbprint in upper-case hex (Entra's
// "Thumbprint" column and customKeyIdentifier).
func CertThumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// CertThumbprintSHA256 is cert's SHA-256 thumbprint in upper-case hex.
func CertThumbprintSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// validateCertificates loads and checks the provider's client_certificate
// blocks. Files are read at every load, so a reload (SIGHUP) picks up a
// replaced certificate or key.
func (c *Config) validateCertificates(p *Provider, now time.Time, diags *hcl.Diagnostics) {
	if len(p.ClientCertificates) == 0 {
		return
	}
	if len(p.ClientCertificates) > MaxClientCertificates {
		*diags = append(*diags, diagAt(p.ClientCertificates[MaxClientCertificates].DefRange, p.DefRange, "Too many client_certificate blocks",
			fmt.Sprintf("provider %q has %d client_certificate blocks; give one, or two while rotating (the one Entra knows and its successor). Remove the retired ones.", p.Name, len(p.ClientCertificates))))
	}
	if p.ClientSecret != "" {
		*diags = append(*diags, diagAt(p.SecretRange, p.DefRange, "Both client_secret and client_certificate",
			fmt.Sprintf("provider %q has a client_secret and a client_certificate block; the bridge authenticates with one credential. Remove client_secret to use the certificate (and delete the secret in Entra), or remove the client_certificate blocks.", p.Name)))
	}
	usable := 0
	var stale hcl.Diagnostics
	seen := map[string]hcl.Range{}
	for _, cc := range p.ClientCertificates {
		def := orRange(cc.DefRange, p.DefRange)
		switch cc.Algorithm {
		case "":
			cc.Algorithm = DefaultCertAlgorithm
		case "PS256", "RS256":
		default:
			*diags = append(*diags, diagAt(cc.AlgRange, def, "Invalid algorithm",
				fmt.Sprintf("client_certificate algorithm %q: use \"RS256\" (the default) or \"PS256\"; Entra accepts both for an RSA certificate.", cc.Algorithm)))
		}
		if looksLikePEM(cc.KeyFile) || looksLikePEM(cc.CertFile) {
			// credential("name") put the file's contents here; never echo
			// them (a private key) into a diagnostic.
			*diags = append(*diags, diagAt(cc.KeyRange, def, "File contents instead of a file name",
				fmt.Sprintf("provider %q client_certificate: cert_file and key_file take file names, but one holds PEM data (from credential(\"name\") or file(...)?). Write key_file = credential_path(\"name\"), which gives the credential's path.", p.Name)))
			continue
		}
		cert, err := loadCertFile(cc.CertFile)
		if err != nil {
			c.fileDiag(diags, err, diagAt(cc.CertRange, def, "Unusable client certificate",
				fmt.Sprintf("provider %q client_certificate cert_file %q: %v. %s", p.Name, cc.CertFile, err, certFileFix)))
		}
		key, err := loadRSAKeyFile(cc.KeyFile)
		if err != nil {
			c.fileDiag(diags, err, diagAt(cc.KeyRange, def, "Unusable client certificate key",
				fmt.Sprintf("provider %q client_certificate key_file %q: %v. %s", p.Name, cc.KeyFile, err, keyFileFix)))
		}
		cc.Cert, cc.Key = cert, key
		if cert == nil {
			continue
		}
		thumb := CertThumbprint(cert)
		if prev, dup := seen[thumb]; dup {
			*diags = append(*diags, diagAt(cc.CertRange, def, "Same certificate twice",
				fmt.Sprintf("provider %q: cert_file %q holds certificate %s, which another client_certificate block (%s) already names. The second block is for the successor certificate.", p.Name, cc.CertFile, thumb, prev.String())))
		}
		seen[thumb] = def
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			*diags = append(*diags, diagAt(cc.CertRange, def, "Not an RSA certificate",
				fmt.Sprintf("provider %q: cert_file %q holds a %s certificate; the bridge signs with RSA (PS256/RS256). Make an RSA one with `oauthbridge cert new`.", p.Name, cc.CertFile, cert.PublicKeyAlgorithm)))
			continue
		}
		if key != nil && !key.PublicKey.Equal(pub) {
			*diags = append(*diags, diagAt(cc.KeyRange, def, "Key does not match the certificate",
				fmt.Sprintf("provider %q: key_file %q is not the private key of certificate %s in cert_file %q. Point key_file at the key the certificate was made with (`oauthbridge cert new` writes them as a pair).", p.Name, cc.KeyFile, thumb, cc.CertFile)))
			continue
		}
		switch {
		case now.After(cert.NotAfter):
			stale = append(stale, diagAt(cc.CertRange, def, "Client certificate expired",
				fmt.Sprintf("provider %q: certificate %s in %q expired on %s; Entra refuses it. Make a new one with `oauthbridge cert new`, upload it to the app registration (Certificates & secrets → Certificates → Upload certificate) and point this block at it.", p.Name, thumb, cc.CertFile, cert.NotAfter.UTC().Format(time.RFC3339))))
		case now.Before(cert.NotBefore):
			stale = append(stale, diagAt(cc.CertRange, def, "Client certificate not yet valid",
				fmt.Sprintf("provider %q: certificate %s in %q is valid only from %s; check the system clock, or wait.", p.Name, thumb, cc.CertFile, cert.NotBefore.UTC().Format(time.RFC3339))))
		default:
			usable++
		}
	}
	if usable > 0 {
		// Rotation: the other certificate still works, so a stale one is
		// a warning (remove the block), not a reason to refuse to start.
		for _, d := range stale {
			d.Severity = hcl.DiagWarning
			d.Detail += " The other client_certificate block is used meanwhile; remove this one."
			c.Warnings = append(c.Warnings, d)
		}
		return
	}
	*diags = append(*diags, stale...)
}

const (
	certFileFix = "cert_file must be a PEM certificate (-----BEGIN CERTIFICATE-----; the .pem/.crt file uploaded to Entra) readable by the service user; `oauthbridge cert new` writes one."
	keyFileFix  = "key_file must be the certificate's unencrypted RSA private key in PEM (PKCS#1 or PKCS#8), readable by the service user. Keep it root-only: put it in " + DefaultCredentialsDir + "/NAME (chmod 600), give it to the service with LoadCredential=NAME:" + DefaultCredentialsDir + "/NAME and write key_file = credential_path(\"NAME\")."
)

// fileDiag records d as an error, or, when the file merely cannot be read by
// an admin command loading with Options.DeferSecrets, as a deferred secret
// (only serve signs assertions).
func (c *Config) fileDiag(diags *hcl.Diagnostics, err error, d *hcl.Diagnostic) {
	if c.deferSecrets && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)) {
		c.deferred = append(c.deferred, d)
		return
	}
	*diags = append(*diags, d)
}

// loadCertFile returns the first certificate of a PEM file (the leaf; any
// chain after it is ignored).
func loadCertFile(path string) (*x509.Certificate, error) {
	b, err := readSmallFile(path)
	if err != nil {
		return nil, err
	}
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("the certificate does not parse: %w", err)
			}
			return cert, nil
		}
	}
	if _, err := x509.ParseCertificate(b); err == nil {
		return nil, errors.New("the file is DER, not PEM; convert it with: openssl x509 -inform der -in FILE -out FILE.pem")
	}
	return nil, errors.New("no PEM CERTIFICATE block in the file")
}

// loadRSAKeyFile returns the RSA private key of a PEM file (PKCS#1 or
// PKCS#8; the file may hold the certificate too).
func loadRSAKeyFile(path string) (*rsa.PrivateKey, error) {
	b, err := readSmallFile(path)
	if err != nil {
		return nil, err
	}
	return ParseRSAKey(b)
}

// ParseRSAKey returns the first private key of PEM data, which must be an
// unencrypted RSA key of at least MinRSAKeyBits.
func ParseRSAKey(b []byte) (*rsa.PrivateKey, error) {
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, errors.New("no PEM PRIVATE KEY block in the file")
		}
		var key any
		var err error
		switch blk.Type {
		case "RSA PRIVATE KEY":
			if _, enc := blk.Headers["Proc-Type"]; enc {
				return nil, errors.New("the key is encrypted; the service cannot type a passphrase: openssl rsa -in KEY -out KEY.plain (then keep it root-only)")
			}
			key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted; the service cannot type a passphrase: openssl pkey -in KEY -out KEY.plain (then keep it root-only)")
		case "EC PRIVATE KEY":
			return nil, errors.New("the key is an EC key; the bridge signs with RSA (PS256/RS256): make an RSA key and certificate with `oauthbridge cert new`")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("the private key does not parse: %w", err)
		}
		rk, ok := key.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("the key is a %T, not RSA; the bridge signs with RSA (PS256/RS256): make an RSA key and certificate with `oauthbridge cert new`", key)
		}
		if bits := rk.N.BitLen(); bits < MinRSAKeyBits {
			return nil, fmt.Errorf("the RSA key has %d bits; Entra needs at least %d (`oauthbridge cert new` makes 3072)", bits, MinRSAKeyBits)
		}
		return rk, nil
	}
}

// looksLikePEM reports whether a file name attribute holds PEM data (or any
// multi-line text) rather than a path.
func looksLikePEM(s string) bool {
	return strings.Contains(s, "-----BEGIN") || strings.ContainsAny(s, "\n\x00")
}
