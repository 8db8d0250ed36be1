package cli

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLoginThroughDaemon runs `oauthbridge login` and `status` against a
// running daemon's admin API: the device code is started inside the daemon,
// the CLI prints it, the person (the fake) approves it, and the CLI reports
// who signed in.
func TestLoginThroughDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var e1 bytes.Buffer
	info, stop, err := StartDemo(ctx, false, Env{Stdin: strings.NewReader(""), Stdout: &e1, Stderr: &e1})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	out := &lockedBuffer{}
	errb := &lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"login", "-config", info.ConfigPath, "helpdesk"}, Env{Stdin: strings.NewReader(""), Stdout: out, Stderr: errb})
	}()
	codeRE := regexp.MustCompile(`enter the code\s+(\S+)`)
	var code string
	for deadline := time.Now().Add(20 * time.Second); code == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := codeRE.FindStringSubmatch(out.String()); m != nil {
			code = m[1]
		}
	}
	if code == "" {
		t.Fatalf("login printed no code:\nstdout: %s\nstderr: %s", out.String(), errb.String())
	}
	if strings.Contains(errb.String(), "No daemon answers") {
		t.Error("login did not use the running daemon")
	}
	if err := info.Fake.ApproveDevice(code, info.Delegate); err != nil {
		t.Fatal(err)
	}
	select {
	case rc := <-done:
		if rc != ExitOK {
			t.Fatalf("login exit %d\nstdout: %s\nstderr: %s", rc, out.String(), errb.String())
		}
	case <-ctx.Done():
		t.Fatal("login did not finish")
	}
	if !strings.Contains(out.String(), "Signed in as "+info.Delegate) {
		t.Errorf("login output lacks the signed-in identity:\n%s", out.String())
	}

	// A different person signing in is refused with a clear message.
	out2, err2 := &lockedBuffer{}, &lockedBuffer{}
	info.Fake.AddUser("mallory@contoso.example")
	go func() {
		done <- Run(ctx, []string{"login", "-config", info.ConfigPath, "helpdesk"}, Env{Stdin: strings.NewReader(""), Stdout: out2, Stderr: err2})
	}()
	code = ""
	for deadline := time.Now().Add(20 * time.Second); code == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := codeRE.FindStringSubmatch(out2.String()); m != nil {
			code = m[1]
		}
	}
	if err := info.Fake.ApproveDevice(code, "mallory@contoso.example"); err != nil {
		t.Fatal(err)
	}
	if rc := <-done; rc == ExitOK || !strings.Contains(err2.String(), "mismatch") {
		t.Errorf("login as the wrong person: exit %d, stderr %q", rc, err2.String())
	}

	// status reads the daemon and shows the account ok and signed in as the delegate.
	var so, se bytes.Buffer
	if rc := Run(ctx, []string{"status", "-config", info.ConfigPath}, Env{Stdin: strings.NewReader(""), Stdout: &so, Stderr: &se}); rc != ExitOK {
		t.Fatalf("status exit %d: %s", rc, se.String())
	}
	if !strings.Contains(so.String(), "daemon at") || !regexp.MustCompile(`helpdesk\s+helpdesk@contoso.example\s+delegated\s+ok`).MatchString(so.String()) {
		t.Errorf("status output:\n%s", so.String())
	}
}
