package reliability

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oauthbridge/oauthbridge/tokens"
)

func tokenHash(tok string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(tok))) }

// introspect asks the fake whether tok is a live access token it issued.
func introspect(t *testing.T, authority, tok string) bool {
	t.Helper()
	resp, err := http.PostForm(authority+"/introspect", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Active bool `json:"active"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Active
}

// TestStoreSurvivesSIGKILL kills a process that rewrites the token store
// in a loop with SIGKILL at random moments, 20 times. After every kill the
// store must open and hold either the last token the writer reported or
// the one it was writing (a genuine token that was never reported) - never
// a torn file, never an older token.
func TestStoreSurvivesSIGKILL(t *testing.T) {
	e := newEnv(t, 0, []account{{"killed", "alice@contoso.com", "alice@contoso.com"}}, nil)
	e.writeConfig()
	bin := filepath.Join(t.TempDir(), "storewriter")
	build := exec.Command("go", "build", "-o", bin, "./storewriter")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build storewriter: %v\n%s", err, out)
	}

	// Sign in once with a manager in this process.
	m, err := tokens.NewManager(e.loadConfig(), tokens.Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	dl, done, err := m.StartDeviceLogin(context.Background(), "killed")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.f.ApproveDevice(dl.UserCode, "alice@contoso.com"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	tok, err := m.AccessToken(context.Background(), "killed")
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	addSecret(tok)
	last := tokenHash(tok)
	seen := map[string]bool{last: true}

	totalWrites := 0
	for round := range 20 {
		cmd := exec.Command(bin, e.cfgPath, "killed")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var printed []string
		firstWrite := make(chan struct{}) // closed at the writer's first reported write
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				printed = append(printed, sc.Text())
				if len(printed) == 1 {
					close(firstWrite)
				}
			}
		}()
		// Kill it while it writes: once it reported a write (on a loaded
		// machine its start alone can take longer than any fixed delay),
		// after a random part of the writes that follow.
		select {
		case <-firstWrite:
		case <-readDone:
			cmd.Wait()
			t.Fatalf("round %d: the writer ended before its first write: %s", round, stderr.String())
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: no write from the writer within a minute: %s", round, stderr.String())
		}
		time.Sleep(time.Duration(rand.IntN(60)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		<-readDone
		werr := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: writer was not killed (%v): %s", round, werr, stderr.String())
		}
		totalWrites += len(printed)
		if len(printed) > 0 {
			last = printed[len(printed)-1]
		}
		for _, h := range printed {
			seen[h] = true
		}

		// The store must open, and its token must be usable without a
		// token request.
		// A request the writer sent just before it died may still be
		// counted by the fake: wait until the count settles.
		before := e.f.TokenRequests()
		for settled := 0; settled < 5; {
			time.Sleep(20 * time.Millisecond)
			if n := e.f.TokenRequests(); n != before {
				before, settled = n, 0
			} else {
				settled++
			}
		}
		m, err := tokens.NewManager(e.loadConfig(), tokens.Options{Logger: e.log})
		if err != nil {
			t.Fatalf("round %d: store does not open after SIGKILL: %v", round, err)
		}
		stBefore := statusOf(t, m, "killed")
		got, err := m.AccessToken(context.Background(), "killed")
		m.Close()
		if err != nil {
			t.Fatalf("round %d: no token after SIGKILL: %v", round, err)
		}
		addSecret(got)
		if n := e.f.TokenRequests() - before; n != 0 {
			t.Errorf("round %d: the stored token was not usable (%d token requests); status %+v", round, n, stBefore)
		}
		h := tokenHash(got)
		switch {
		case h == last:
		case seen[h]:
			t.Fatalf("round %d: store rolled back to an older token", round)
		case !introspect(t, e.f.AuthorityURL, got):
			t.Fatalf("round %d: store holds a token the fake never issued or that is dead", round)
		default: // written but killed before it was reported
		}
		last = h
		seen[h] = true
		fi, err := os.Stat(filepath.Join(e.state, tokens.StoreFileName))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("round %d: store file: %v mode %v", round, err, fi.Mode())
		}
		if l := leaks(stderr.String()); len(l) > 0 {
			t.Errorf("writer stderr leaks %v", l)
		}
	}
	t.Logf("%d store writes across 20 SIGKILLs", totalWrites)
	// Temporary files of interrupted writes never replace the store, and
	// opening the store (done after every kill above) removes them, so they
	// cannot pile up in the state directory.
	tmps, _ := filepath.Glob(filepath.Join(e.state, "."+tokens.StoreFileName+".tmp-*"))
	if len(tmps) != 0 {
		t.Errorf("%d temporary files of killed writes left in the state directory: %v", len(tmps), tmps)
	}
}
