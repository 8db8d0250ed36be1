package tokens

import (
	"bytes"
	"testing"

	"github.com/oauthbridge/oauthbridge/config"
)

func TestDerivedKey(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{StateDir: dir, AccountByName: map[string]*config.Account{}}
	m, err := NewManager(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, err := m.DerivedKey("imap uid map")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := m.DerivedKey("imap uid map")
	c, _ := m.DerivedKey("something else")
	if len(a) != KeySize || !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatalf("derived keys: %x %x %x", a, b, c)
	}
}
