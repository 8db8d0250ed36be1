package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// DefaultCredentialsDir is where credential("name") reads when
// $CREDENTIALS_DIRECTORY is not set (an admin's shell) and no -credentials
// flag names another directory. The unit passes the same files to the
// service with LoadCredential=name:/etc/oauthbridge/credentials/name.
const DefaultCredentialsDir = "/etc/oauthbridge/credentials"

// ResolveCredentialsDir returns the directory credential() reads and a
// phrase saying where that choice came from: dir itself when set (the
// -credentials flag), else $CREDENTIALS_DIRECTORY (systemd sets it for the
// service), else DefaultCredentialsDir.
func ResolveCredentialsDir(dir string) (string, string) {
	if dir != "" {
		return dir, "-credentials"
	}
	if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
		return d, "$CREDENTIALS_DIRECTORY"
	}
	return DefaultCredentialsDir, "the default; $CREDENTIALS_DIRECTORY is not set"
}

// loadState is what the secret functions of one Load share: where
// credential() reads, and, with Options.DeferSecrets, the secrets that could
// not be read.
type loadState struct {
	credDir, credSource string
	deferSecrets        bool
	failures            []string // indexed by the number in the placeholder
}

// unresolvedMarker starts the placeholder a secret function returns instead
// of failing under Options.DeferSecrets. It cannot occur in a real secret
// (NUL bytes) and never leaves this package unredacted: Secret prints as
// REDACTED, and any other attribute holding one fails validation.
const unresolvedMarker = "\x00oauthbridge-unresolved-secret-"

func (ls *loadState) fail(err error) (cty.Value, error) {
	if !ls.deferSecrets {
		return cty.NilVal, function.NewArgError(0, err)
	}
	ls.failures = append(ls.failures, err.Error())
	return cty.StringVal(fmt.Sprintf("%s%d\x00", unresolvedMarker, len(ls.failures)-1)), nil
}

// evalContext holds the functions a configuration may call. None of them
// puts the value it returns into an error message: HCL shows the source
// expression instead, so secrets stay out of diagnostics.
func (ls *loadState) evalContext() *hcl.EvalContext {
	return &hcl.EvalContext{Functions: map[string]function.Function{
		"env":        ls.envFunc(),
		"file":       ls.fileFunc(),
		"credential": ls.credentialFunc(),
		// credential_path("name") for settings that take a file name (the
		// tls block's cert_file and key_file).
		"credential_path": ls.credentialPathFunc(),
	}}
}

func (ls *loadState) envFunc() function.Function {
	return function.New(&function.Spec{
		Description: "Returns the value of an environment variable; fails if it is unset.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			name := args[0].AsString()
			v, ok := os.LookupEnv(name)
			if !ok {
				return ls.fail(fmt.Errorf("environment variable %q is not set. The service gets it from the unit's Environment= or EnvironmentFile=; a shell does not: export it first (for an EnvironmentFile: set -a; . /etc/default/oauthbridge; set +a), or keep the secret in a file and use credential(%q) instead, which the admin commands read from %s", name, strings.ToLower(strings.ReplaceAll(name, "_", "-")), DefaultCredentialsDir))
			}
			return cty.StringVal(v), nil
		},
	})
}

func (ls *loadState) fileFunc() function.Function {
	return function.New(&function.Spec{
		Description: "Returns the contents of a file, without one trailing newline.",
		Params:      []function.Parameter{{Name: "path", Type: cty.String}},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			b, err := readSmallFile(args[0].AsString())
			if err != nil {
				return ls.fail(err)
			}
			return cty.StringVal(trimNewline(string(b))), nil
		},
	})
}

func (ls *loadState) credentialFunc() function.Function {
	return function.New(&function.Spec{
		Description: "Returns a systemd credential (LoadCredential=name:...), without one trailing newline.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			name := args[0].AsString()
			path, err := ls.credentialPath(name)
			if err != nil {
				return cty.NilVal, function.NewArgError(0, err)
			}
			b, err := readSmallFile(path)
			if err != nil {
				return ls.fail(ls.credentialError(name, path, err))
			}
			return cty.StringVal(trimNewline(string(b))), nil
		},
	})
}

// credentialPathFunc returns the path of a credential rather than its
// contents, for settings that take a file name: under the unit the service
// user can read $CREDENTIALS_DIRECTORY/name whatever the owner of the file
// LoadCredential= copied it from.
func (ls *loadState) credentialPathFunc() function.Function {
	return function.New(&function.Spec{
		Description: "Returns the path of a systemd credential (LoadCredential=name:...); fails if it cannot be read.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			name := args[0].AsString()
			path, err := ls.credentialPath(name)
			if err != nil {
				return cty.NilVal, function.NewArgError(0, err)
			}
			f, err := os.Open(path)
			if err != nil {
				if ls.deferSecrets {
					// The file is a TLS certificate or key; validate defers
					// its load error like a secret's.
					return cty.StringVal(path), nil
				}
				return cty.NilVal, function.NewArgError(0, ls.credentialError(name, path, err))
			}
			f.Close()
			return cty.StringVal(path), nil
		},
	})
}

// credentialPath is the credentials directory's file name, for a plain
// file name.
func (ls *loadState) credentialPath(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("credential name %q is not a plain file name", name)
	}
	return filepath.Join(ls.credDir, name), nil
}

// credentialError says which directory was read, why that one, and the
// unit line that gives the service the same file.
func (ls *loadState) credentialError(name, path string, err error) error {
	unitLine := fmt.Sprintf("LoadCredential=%s:%s", name, filepath.Join(DefaultCredentialsDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("credential %q: %s does not exist (credentials directory %s: %s). Put the secret in %s (mode 0600, owner root); the unit gives it to the service with %s. An admin command reads another directory with -credentials DIR", name, path, ls.credDir, ls.credSource, filepath.Join(DefaultCredentialsDir, name), unitLine)
	}
	return fmt.Errorf("credential %q: %w (credentials directory %s: %s; the unit line is %s; admin commands need root to read the credential files, or -credentials DIR)", name, err, ls.credDir, ls.credSource, unitLine)
}

func trimNewline(s string) string {
	if strings.HasSuffix(s, "\r\n") {
		return s[:len(s)-2]
	}
	return strings.TrimSuffix(s, "\n")
}

// maxSecretFile bounds what file() and credential() read: a secret is small,
// and a path like /dev/zero must not hang or exhaust the loader.
const maxSecretFile = 1 << 20

func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("%s is larger than %d bytes; a secret file should hold just the secret", path, maxSecretFile)
	}
	return b, nil
}
