package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthbridge/oauthbridge/config"
	"github.com/oauthbridge/oauthbridge/graphmail"
)

// writeGraphConfig writes a configuration whose account helpdesk is read
// through Graph (read_via = "graph"), for local user otrs / pw-otrs-1.
func (e *env) writeGraphConfig(t *testing.T) {
	t.Helper()
	h, _ := bcrypt.GenerateFromPassword([]byte("pw-otrs-1"), bcrypt.MinCost)
	src := fmt.Sprintf(`state_dir = %q
imap { listen = ["127.0.0.1:0"] }
pop3 { listen = ["127.0.0.1:0"] }
smtp { listen = ["127.0.0.1:0"] }
admin { listen = "127.0.0.1:0" }
provider "fake" {
  tenant        = "contoso.com"
  client_id     = "app-id"
  client_secret = %q
  authority     = %q
  imap_server   = %q
  pop3_server   = %q
  smtp_server   = %q
  graph_url     = %q
  ca_file       = %q
}
account "helpdesk" {
  provider = "fake"
  mailbox  = "helpdesk@contoso.com"
  delegate = "alice@contoso.com"
  read_via = "graph"
}
user "otrs" {
  password_hash = %q
  account       = "helpdesk"
}
`, filepath.Join(e.dir, "state"), e.secret, e.f.AuthorityURL, e.f.IMAPAddr, e.f.POP3Addr, e.f.SMTPAddr, e.f.GraphURL(), e.caFile, h)
	if err := os.WriteFile(e.cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
}

// restart starts a daemon on the same configuration and state_dir, whose
// token store already holds the account's grant (no new sign-in).
func (e *env) restart(t *testing.T) *Daemon {
	t.Helper()
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

// popSizes logs in over POP3 and returns STAT's and LIST's answers.
func popSizes(t *testing.T, d *Daemon) (string, string) {
	t.Helper()
	p := dialPOP3(t, d.Addr("pop3"))
	p.cmd(t, "USER otrs")
	if l := p.cmd(t, "PASS pw-otrs-1"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("POP3 login: %q", l)
	}
	stat := p.cmd(t, "STAT")
	var list []string
	for l := p.cmd(t, "LIST"); l != "."; l = p.line(t) {
		list = append(list, l)
	}
	if l := p.cmd(t, "QUIT"); !strings.HasPrefix(l, "+OK") {
		t.Errorf("QUIT: %q", l)
	}
	return stat, strings.Join(list, "\n")
}

// imapSizes logs in over IMAP and returns RFC822.SIZE of INBOX's messages
// by UID.
func imapSizes(t *testing.T, d *Daemon) map[imap.UID]int64 {
	t.Helper()
	c, err := imapLogin(t, d.Addr("imap"), "otrs", "pw-otrs-1")
	if err != nil {
		t.Fatalf("IMAP login: %v", err)
	}
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3, 4), &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
	if err != nil {
		t.Fatalf("FETCH RFC822.SIZE: %v", err)
	}
	out := map[imap.UID]int64{}
	for _, m := range msgs {
		out[m.UID] = m.RFC822Size
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The sizes measured for POP3 LIST and IMAP RFC822.SIZE survive a daemon
// stop and start on the same state_dir: after the restart neither protocol
// reads a message from Graph to answer them.
func TestGraphSizesSurviveRestart(t *testing.T) {
	e := newEnv(t)           // delivers one message
	e.f.SetGraphSizeSkew(57) // Exchange's store size is not the MIME size
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 20000)
	for _, raw := range []string{"Subject: two\r\n\r\nbody\r\n", big} {
		if err := e.f.Deliver("helpdesk@contoso.com", []byte(raw)); err != nil {
			t.Fatal(err)
		}
	}
	e.writeGraphConfig(t)
	d := e.start(t)
	stopped := false
	defer func() {
		if !stopped {
			d.Shutdown(context.Background())
		}
	}()

	// IMAP measures the three messages (one read each) ...
	reads := e.f.GraphContentRequests()
	sizes := imapSizes(t, d)
	if len(sizes) != 3 || e.f.GraphContentRequests()-reads != 3 {
		t.Fatalf("first FETCH RFC822.SIZE: %v with %d reads", sizes, e.f.GraphContentRequests()-reads)
	}
	// ... a fourth message arrives, POP3 measures it (one read).
	if err := e.f.Deliver("helpdesk@contoso.com", []byte("Subject: four\r\n\r\nfour\r\n")); err != nil {
		t.Fatal(err)
	}
	reads = e.f.GraphContentRequests()
	stat, list := popSizes(t, d)
	if !strings.HasPrefix(stat, "+OK 4 ") || e.f.GraphContentRequests()-reads != 1 {
		t.Fatalf("first STAT %q LIST %q with %d reads", stat, list, e.f.GraphContentRequests()-reads)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	stopped = true
	p := filepath.Join(e.dir, "state", graphmail.SizeFileName)
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("size file after shutdown: %v %v", fi, err)
	}

	d = e.restart(t)
	defer d.Shutdown(context.Background())
	reads = e.f.GraphContentRequests()
	stat2, list2 := popSizes(t, d)
	sizes2 := imapSizes(t, d)
	if n := e.f.GraphContentRequests() - reads; n != 0 {
		t.Errorf("after the restart POP3 STAT/LIST and IMAP RFC822.SIZE read %d messages from Graph, want 0", n)
	}
	if stat2 != stat || list2 != list {
		t.Errorf("after the restart STAT %q LIST %q, before %q %q", stat2, list2, stat, list)
	}
	// IMAP's sizes are those it measured and the one POP3 measured.
	var listed, fetched []int64
	for _, l := range strings.Split(list2, "\n")[1:] {
		var n int
		var size int64
		fmt.Sscanf(l, "%d %d", &n, &size)
		listed = append(listed, size)
	}
	for uid, n := range sizes2 {
		fetched = append(fetched, n)
		if uid <= 3 && n != sizes[uid] {
			t.Errorf("UID %d: RFC822.SIZE %d after the restart, %d before", uid, n, sizes[uid])
		}
	}
	slices.Sort(listed)
	slices.Sort(fetched)
	if len(sizes2) != 4 || !slices.Equal(listed, fetched) {
		t.Errorf("after the restart RFC822.SIZE %v, LIST %v", sizes2, list2)
	}
	// The sizes are the octets the messages are: RETR agrees with LIST.
	pc := dialPOP3(t, d.Addr("pop3"))
	pc.cmd(t, "USER otrs")
	pc.cmd(t, "PASS pw-otrs-1")
	for i, l := range strings.Split(list2, "\n")[1:] {
		var n, size int
		fmt.Sscanf(l, "%d %d", &n, &size)
		got := 0
		if l := pc.cmd(t, fmt.Sprint("RETR ", i+1)); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("RETR %d: %q", i+1, l)
		}
		for l := pc.line(t); l != "."; l = pc.line(t) {
			got += len(strings.TrimPrefix(l, ".")) + 2
		}
		if got != size {
			t.Errorf("message %d: LIST %d, RETR sent %d octets", n, size, got)
		}
	}
	pc.cmd(t, "QUIT")
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, "graph-sizes") && strings.Contains(l, `"level":"WARN"`) {
			t.Errorf("size store warning: %s", l)
		}
	}
}

// A damaged size file never stops the bridge: the restart logs a warning
// naming the file, serves (measuring again), and replaces the file at
// shutdown with a good one.
func TestGraphSizesDamagedFile(t *testing.T) {
	e := newEnv(t) // delivers one message
	e.writeGraphConfig(t)
	d := e.start(t)
	stat, _ := popSizes(t, d)
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.dir, "state", graphmail.SizeFileName)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0xff
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}

	for round, wantReads := range []int{1, 0} {
		d = e.restart(t)
		reads := e.f.GraphContentRequests()
		if got, _ := popSizes(t, d); got != stat {
			t.Errorf("round %d: STAT %q, before %q", round, got, stat)
		}
		if n := e.f.GraphContentRequests() - reads; n != wantReads {
			t.Errorf("round %d: %d message reads, want %d", round, n, wantReads)
		}
		if err := d.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	warned := 0
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, `"level":"WARN"`) && strings.Contains(l, "graph-sizes") {
			warned++
			if !strings.Contains(l, p) || !strings.Contains(l, "authentication failed") || !strings.Contains(l, "starting without it") {
				t.Errorf("warning %s", l)
			}
		}
	}
	if warned != 1 {
		t.Errorf("%d size file warnings, want 1 (the damaged file, not the rewritten one)", warned)
	}
}
