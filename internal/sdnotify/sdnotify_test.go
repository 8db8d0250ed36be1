package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens a unixgram socket like systemd's notify socket and returns
// a function that reads the next datagram.
func listen(t *testing.T, name string) func() string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("ListenUnixgram(%q) = %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			t.Fatalf("ReadFromUnix() = %v", err)
		}
		return string(buf[:n])
	}
}

func TestPathSocket(t *testing.T) {
	recv := listen(t, filepath.Join(t.TempDir(), "notify.sock"))
	for _, tc := range []struct {
		name string
		fn   func() error
		want string
	}{
		{"ready", Ready, "READY=1"},
		{"stopping", Stopping, "STOPPING=1"},
		{"status", func() error { return Status("serving 3 accounts\nINJECTED=1") }, "STATUS=serving 3 accounts INJECTED=1"},
		{"raw", func() error { return Notify("WATCHDOG=1") }, "WATCHDOG=1"},
	} {
		if err := tc.fn(); err != nil {
			t.Fatalf("%s: Notify() = %v", tc.name, err)
		}
		if got := recv(); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestReloadingSendsMonotonicUsec(t *testing.T) {
	recv := listen(t, filepath.Join(t.TempDir(), "n.sock"))
	before := monotonicUsec()
	if err := Reloading(); err != nil {
		t.Fatalf("Reloading() = %v", err)
	}
	after := monotonicUsec()
	got := recv()
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("Reloading sent %q, want RELOADING=1\\nMONOTONIC_USEC=<n>", got)
	}
	usec, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC not a number: %q", lines[1])
	}
	if before == 0 || usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d, want within [%d, %d]", usec, before, after)
	}
}

func TestAbstractSocket(t *testing.T) {
	name := "@oauthbridge-sdnotify-test-" + strconv.Itoa(os.Getpid())
	recv := listen(t, name)
	if err := Ready(); err != nil {
		t.Fatalf("Ready() = %v", err)
	}
	if got := recv(); got != "READY=1" {
		t.Errorf("got %q, want READY=1", got)
	}
}

func TestUnsetIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	for _, fn := range []func() error{Ready, Reloading, Stopping, func() error { return Status("x") }} {
		if err := fn(); err != nil {
			t.Errorf("without NOTIFY_SOCKET: %v, want nil", err)
		}
	}
}

func TestErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "relative/path")
	if err := Ready(); !errors.Is(err, ErrBadSocket) {
		t.Errorf("relative NOTIFY_SOCKET: Ready() = %v, want ErrBadSocket", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	if err := Ready(); err == nil || !strings.HasPrefix(err.Error(), "sdnotify: ") {
		t.Errorf("missing socket: Ready() = %v, want an sdnotify: error", err)
	}
}
