package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The listener blocks in two stages: what the file says (strings, ranges)
// becomes typed runtime values; an invalid value is reported at its line,
// and the runtime Config keeps nothing of the first stage.
func TestListenerBlocksTwoStages(t *testing.T) {
	base := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\naccount \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n}\n", t.TempDir())
	cfg, err := Parse("t.hcl", []byte(base+"imap {\n  idle_timeout = \"45m\"\n  listen = [\"127.0.0.1:0\"]\n}\nsmtp {\n  read_timeout = \"90s\"\n  domain = \"bridge.test\"\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IMAP.Limits.IdleTimeout != 45*time.Minute || cfg.IMAP.Limits.PreauthTimeout != DefaultPreauthTimeout {
		t.Errorf("imap limits = %+v", cfg.IMAP.Limits)
	}
	if cfg.SMTP.Limits.ReadTimeout != 90*time.Second || cfg.SMTP.Domain != "bridge.test" {
		t.Errorf("smtp block = %+v", cfg.SMTP)
	}
	if cfg.POP3 == nil || cfg.POP3.Listen[0] != "127.0.0.1:1110" {
		t.Errorf("absent pop3 block = %+v, want its default listener", cfg.POP3)
	}
	if cfg.IMAP.DefRange.Start.Line != 10 {
		t.Errorf("imap block range = %v, want line 10", cfg.IMAP.DefRange)
	}
	if cfg.schema != nil {
		t.Error("the first stage outlives the load")
	}

	cfg, err = Parse("t.hcl", []byte("shutdown_timeout = \"5s\"\n"+base))
	if err != nil || cfg.Shutdown != 5*time.Second {
		t.Fatalf("shutdown_timeout = \"5s\" -> %v, %v", cfg, err)
	}
	if _, err := Parse("t.hcl", []byte("shutdown_timeout = \"later\"\n"+base)); err == nil || !strings.Contains(err.Error(), "shutdown_timeout") {
		t.Fatalf("bad shutdown_timeout = %v", err)
	}

	_, err = Parse("t.hcl", []byte(base+"pop3 {\n  idle_timeout = \"soon\"\n}\n"))
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(ce.Error(), "idle_timeout") || ce.Diags[0].Subject == nil || ce.Diags[0].Subject.Start.Line != 11 {
		t.Fatalf("bad idle_timeout = %v, want an error at t.hcl:11", err)
	}
}
