package config

import (
	"errors"
	"fmt"
	"reflect"
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

// firstStageAttrs are the attributes whose raw string (and range) lives
// only in the first stage: no type reachable from Config may carry them.
var firstStageAttrs = map[string]bool{
	"shutdown_timeout": true, "preauth_timeout": true, "idle_timeout": true, "upstream_timeout": true,
	"connection_wait": true, "read_timeout": true, "write_timeout": true, "auto_smtp_recheck": true,
	"graph_poll_interval": true,
	"lease_duration":      true, "lease_heartbeat": true, "poll_interval": true,
	"refresh_failing_for": true, "credential_expiry_warning": true, "upstream_login_window": true, "check_interval": true,
	"email_to": true, "client_secret_expires": true,
}

// hclAttrsReachable lists the hcl attribute names tagged on any struct
// type reachable from t, but for Config.schema.
func hclAttrsReachable(t reflect.Type, seen map[reflect.Type]bool, out map[string]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		if t.Kind() == reflect.Map {
			hclAttrsReachable(t.Key(), seen, out)
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return
	}
	seen[t] = true
	for i := range t.NumField() {
		f := t.Field(i)
		if t == reflect.TypeOf(Config{}) && f.Name == "schema" {
			continue // the first stage itself: nil after the load (checked above)
		}
		if tag, ok := f.Tag.Lookup("hcl"); ok {
			out[strings.Split(tag, ",")[0]] = t.String() + "." + f.Name
		}
		hclAttrsReachable(f.Type, seen, out)
	}
}

// A loaded Config carries no first-stage state: the schema is dropped and
// no type reachable from Config (exported or not) has a field for a raw
// duration or date string as written in the file.
func TestConfigHasNoFirstStage(t *testing.T) {
	base := fmt.Sprintf("state_dir = %q\nprovider \"p\" {\n tenant = \"t\"\n client_id = \"c\"\n}\naccount \"a\" {\n provider = \"p\"\n mailbox = \"a@x.com\"\n}\n", t.TempDir())
	cfg, err := Parse("t.hcl", []byte(base+"store {\n  lease_duration = \"2m\"\n  lease_heartbeat = \"20s\"\n  poll_interval = \"3s\"\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.schema != nil {
		t.Error("the first stage outlives the load")
	}
	if s := cfg.Store; s.Lease != 2*time.Minute || s.Heartbeat != 20*time.Second || s.Poll != 3*time.Second {
		t.Errorf("store = %+v", s)
	}
	attrs := map[string]string{}
	hclAttrsReachable(reflect.TypeOf(Config{}), map[reflect.Type]bool{}, attrs)
	for a := range firstStageAttrs {
		if where, ok := attrs[a]; ok {
			t.Errorf("%s is still reachable from Config as %s", a, where)
		}
	}

	// admin tls (unset, true, false) is resolved into UseTLS only.
	if _, ok := reflect.TypeOf(AdminBlock{}).FieldByName("TLS"); ok {
		t.Error("AdminBlock still carries tls as written beside UseTLS")
	}
	if cfg.Admin.UseTLS {
		t.Error("admin on loopback without tls = true uses TLS")
	}

	// The first stage's errors keep their place in the file.
	_, err = Parse("t.hcl", []byte(base+"store {\n  poll_interval = \"often\"\n}\n"))
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(ce.Error(), "poll_interval") || ce.Diags[0].Subject == nil || ce.Diags[0].Subject.Start.Line != 11 {
		t.Fatalf("bad poll_interval = %v, want an error at t.hcl:11", err)
	}
}
