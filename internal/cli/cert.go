package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/internal/certgen"
)

// DefaultCertCN is the subject common name of `oauthbridge cert new`.
const DefaultCertCN = "oauthbridge"

// runCert dispatches "oauthbridge cert SUBCOMMAND"; "new" is the only one.
func runCert(ctx context.Context, env Env, args []string) error {
	if len(args) > 0 && args[0] == "new" {
		return runCertNew(ctx, env, args[1:])
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		err := runCertNew(ctx, env, []string{"-h"})
		if len(args) == 0 {
			return usagef("cert needs a subcommand: oauthbridge cert new -cert FILE -key FILE")
		}
		return err
	}
	return usagef("unknown cert subcommand %q; the only one is 'new'", args[0])
}

func runCertNew(_ context.Context, env Env, args []string) error {
	fs := newFlags(env, "cert new", "", fmt.Sprintf(`
Makes an RSA key and a self-signed certificate for an app registration's
certificate credential (Microsoft recommends certificates over client
secrets, which expire after at most two years and then stop every account
with AADSTS7000222). It writes the key (mode 0600) and the certificate,
refuses to overwrite either without -force, and prints the thumbprint Entra
shows, the expiry, the upload step and the client_certificate block for the
provider.

Only the certificate (.crt) is uploaded to Entra; the key never leaves this
machine. Keep the key root-only in %s and give it to the service
with LoadCredential= (the printed snippet shows how).

Rotation: make the next certificate well before the current one expires,
upload it, and add it as a second client_certificate block; the bridge uses
whichever one Entra accepts. Remove the old block and the old certificate in
Entra afterwards.`, config.DefaultCredentialsDir))
	certFile := fs.String("cert", "", "where to write the certificate (PEM); required")
	keyFile := fs.String("key", "", "where to write the private key (PEM, PKCS#8, mode 0600); required")
	cn := fs.String("cn", DefaultCertCN, "subject common name, shown in Entra's certificate list (e.g. oauthbridge-contoso)")
	days := fs.Int("days", int(certgen.DefaultLifetime/(24*time.Hour)), fmt.Sprintf("lifetime in days (1-%d)", int(certgen.MaxLifetime/(24*time.Hour))))
	bits := fs.Int("bits", certgen.DefaultBits, "RSA key size: 2048, 3072 or 4096")
	provider := fs.String("provider", "contoso", "provider block name used in the printed configuration snippet")
	force := fs.Bool("force", false, "overwrite existing files")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("cert new takes no arguments; give the files with -cert and -key")
	}
	if *certFile == "" || *keyFile == "" {
		return usagef("-cert and -key are required, e.g. oauthbridge cert new -cert /etc/oauthbridge/contoso.crt -key %s/contoso-cert.key", config.DefaultCredentialsDir)
	}
	maxDays := int(certgen.MaxLifetime / (24 * time.Hour))
	if *days < 1 || *days > maxDays {
		return usagef("-days must be between 1 and %d (two years, the bridge's ceiling: a key that never rotates leaks unnoticed)", maxDays)
	}
	switch *bits {
	case 2048, 3072, 4096:
	default:
		return usagef("-bits must be 2048, 3072 or 4096")
	}
	certPath, err := filepath.Abs(*certFile)
	if err != nil {
		return err
	}
	keyPath, err := filepath.Abs(*keyFile)
	if err != nil {
		return err
	}
	if certPath == keyPath {
		return usagef("-cert and -key must be different files: only the certificate is uploaded to Entra")
	}
	if !*force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s exists; refusing to overwrite it (a key in use would be lost). Choose another file, or add -force", p)
			}
		}
	}
	now := time.Now()
	cert, key, err := certgen.New(certgen.Options{CommonName: *cn, Bits: *bits, Lifetime: time.Duration(*days) * 24 * time.Hour, Now: now})
	if err != nil {
		return err
	}
	// A missing directory is made: the key's private to its owner.
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
		return fmt.Errorf("make the key's directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o755); err != nil {
		return fmt.Errorf("make the certificate's directory: %w", err)
	}
	if err := writeFileMode(keyPath, certgen.KeyPEM(key), 0o600, *force); err != nil {
		return fmt.Errorf("write the key: %w", err)
	}
	if err := writeFileMode(certPath, certgen.CertPEM(cert), 0o644, *force); err != nil {
		os.Remove(keyPath) // a key without its certificate is useless
		return fmt.Errorf("write the certificate: %w", err)
	}

	w := env.Stdout
	fmt.Fprintf(w, "Wrote the private key to %s (mode 0600; it never leaves this machine)\n", keyPath)
	fmt.Fprintf(w, "Wrote the certificate to %s\n\n", certPath)
	fmt.Fprintf(w, "Certificate CN=%s, RSA %d bits\n", *cn, *bits)
	fmt.Fprintf(w, "  Thumbprint (SHA-1, as Entra shows it): %s\n", config.CertThumbprint(cert))
	fmt.Fprintf(w, "  SHA-256 thumbprint:                    %s\n", config.CertThumbprintSHA256(cert))
	fmt.Fprintf(w, "  Valid from %s to %s (%d days)\n\n", cert.NotBefore.UTC().Format("2006-01-02 15:04 MST"), cert.NotAfter.UTC().Format("2006-01-02 15:04 MST"), *days)
	fmt.Fprintf(w, "1. Upload the certificate (not the key) to the app registration:\n")
	fmt.Fprintf(w, "   Microsoft Entra admin center → App registrations → your app → Certificates & secrets →\n")
	fmt.Fprintf(w, "   Certificates → Upload certificate → %s → Add.\n", certPath)
	fmt.Fprintf(w, "   The Thumbprint column must then show %s.\n", config.CertThumbprint(cert))
	fmt.Fprintf(w, "   Or with the Azure CLI (--append keeps the certificates already there):\n")
	fmt.Fprintf(w, "     az ad app credential reset --id CLIENT_ID --cert @%s --append\n\n", certPath)
	fmt.Fprintf(w, "2. Add it to provider %q in the configuration:\n\n", *provider)
	credName := ""
	if filepath.Dir(keyPath) == config.DefaultCredentialsDir {
		credName = filepath.Base(keyPath)
	}
	fmt.Fprintf(w, "  provider %q {\n    # ... tenant, client_id as before; remove client_secret once the certificate works\n", *provider)
	fmt.Fprintf(w, "    client_certificate {\n      cert_file = %q\n", certPath)
	if credName != "" {
		fmt.Fprintf(w, "      key_file  = credential_path(%q)\n    }\n  }\n\n", credName)
		fmt.Fprintf(w, "   and give the key to the service (systemctl edit oauthbridge, then systemctl restart oauthbridge:\n")
		fmt.Fprintf(w, "   systemd copies credentials at start, a reload does not see a new one):\n")
		fmt.Fprintf(w, "     [Service]\n     LoadCredential=%s:%s\n\n", credName, keyPath)
	} else {
		fmt.Fprintf(w, "      key_file  = %q\n    }\n  }\n\n", keyPath)
		fmt.Fprintf(w, "   The service user must be able to read the key; better keep it root-only in %s\n", config.DefaultCredentialsDir)
		fmt.Fprintf(w, "   and use key_file = credential_path(\"NAME\") with LoadCredential=NAME:%s/NAME.\n\n", config.DefaultCredentialsDir)
	}
	fmt.Fprintf(w, "3. Check and apply: oauthbridge check, then systemctl reload oauthbridge;\n")
	fmt.Fprintf(w, "   oauthbridge status shows the certificate in use and its expiry.\n")
	if strings.HasPrefix(keyPath, "/etc/") && os.Geteuid() != 0 {
		fmt.Fprintf(env.Stderr, "note: you are not root; check that %s ends up owned by root\n", keyPath)
	}
	return nil
}

// writeFileMode writes data to path with mode, creating it exclusively
// unless overwrite is set. The mode is set before any byte is written.
func writeFileMode(path string, data []byte, mode os.FileMode, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; refusing to overwrite it without -force", path)
	}
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // an existing file keeps its mode otherwise; umask too
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
