package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// evalContext holds the functions a configuration may call. None of them
// puts the value it returns into an error message: HCL shows the source
// expression instead, so secrets stay out of diagnostics.
func evalContext() *hcl.EvalContext {
	return &hcl.EvalContext{Functions: map[string]function.Function{
		"env":        envFunc,
		"file":       fileFunc,
		"credential": credentialFunc,
		// credential_path("name") for settings that take a file name.
		"credential_path": credentialPathFunc,
	}}
}

var envFunc = function.New(&function.Spec{
	Description: "Returns the value of an environment variable; fails if it is unset.",
	Params:      []function.Parameter{{Name: "name", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		name := args[0].AsString()
		v, ok := os.LookupEnv(name)
		if !ok {
			return cty.NilVal, function.NewArgErrorf(0, "environment variable %q is not set; export it in the service's environment (systemd: Environment= or EnvironmentFile=)", name)
		}
		return cty.StringVal(v), nil
	},
})

var fileFunc = function.New(&function.Spec{
	Description: "Returns the contents of a file, without one trailing newline.",
	Params:      []function.Parameter{{Name: "path", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		b, err := readSmallFile(args[0].AsString())
		if err != nil {
			return cty.NilVal, function.NewArgError(0, err)
		}
		return cty.StringVal(trimNewline(string(b))), nil
	},
})

var credentialFunc = function.New(&function.Spec{
	Description: "Returns a systemd credential ($CREDENTIALS_DIRECTORY/name), without one trailing newline.",
	Params:      []function.Parameter{{Name: "name", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		name := args[0].AsString()
		path, err := credentialPath(name)
		if err != nil {
			return cty.NilVal, function.NewArgError(0, err)
		}
		b, err := readSmallFile(path)
		if err != nil {
			return cty.NilVal, function.NewArgError(0, fmt.Errorf("credential %q: %w (is LoadCredential=%s:... in the unit?)", name, err, name))
		}
		return cty.StringVal(trimNewline(string(b))), nil
	},
})

// credentialPathFunc returns the path of a systemd credential rather than
// its contents, for settings that take a file name (tls cert_file and
// key_file): the service user can read $CREDENTIALS_DIRECTORY/name, whatever
// the owner of the file LoadCredential= copied it from.
var credentialPathFunc = function.New(&function.Spec{
	Description: "Returns the path of a systemd credential ($CREDENTIALS_DIRECTORY/name); fails if it cannot be read.",
	Params:      []function.Parameter{{Name: "name", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		name := args[0].AsString()
		path, err := credentialPath(name)
		if err != nil {
			return cty.NilVal, function.NewArgError(0, err)
		}
		f, err := os.Open(path)
		if err != nil {
			return cty.NilVal, function.NewArgError(0, fmt.Errorf("credential %q: %w (is LoadCredential=%s:... in the unit?)", name, err, name))
		}
		f.Close()
		return cty.StringVal(path), nil
	},
})

// credentialPath is $CREDENTIALS_DIRECTORY/name, for a plain file name.
func credentialPath(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("credential name %q is not a plain file name", name)
	}
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return "", fmt.Errorf("$CREDENTIALS_DIRECTORY is not set: credential(%q) works under systemd with LoadCredential=%s:/path/to/file in the unit", name, name)
	}
	return filepath.Join(dir, name), nil
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
