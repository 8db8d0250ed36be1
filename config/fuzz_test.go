package config

import (
	"os"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the configuration loader: it must
// return a config or diagnostics, never panic.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../config.hcl.example"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("imap { listen = [\"0.0.0.0:1\"] }\n"))
	f.Add([]byte("account \"a\" { provider = \"p\"\n mailbox = \"x\" }\nuser \"u\" { password_hash = \"$2a$04$x\"\n account = \"a\" }\n"))
	f.Add([]byte("provider \"p\" { tenant = \"t\"\n client_id = env(\"X\") }\n"))
	f.Add([]byte("state_dir = \"${\"\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse("fuzz.hcl", src)
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		if err != nil {
			if ce, ok := err.(*Error); ok {
				ce.WriteTo(discard{})
			}
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
