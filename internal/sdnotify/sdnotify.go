// Package sdnotify tells systemd about the daemon's state over
// $NOTIFY_SOCKET (sd_notify(3)) without a dependency: one unixgram datagram
// per call. Every function is a no-op returning nil when NOTIFY_SOCKET is
// unset, so the daemon behaves the same outside systemd.
//
// The unit uses Type=notify: READY=1 once the listeners are bound,
// RELOADING=1 ... READY=1 around a SIGHUP reload, STOPPING=1 at shutdown.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultWriteTimeout bounds one datagram write; systemd reads the socket
// at once, so a blocked write means systemd is wedged and we must not be.
const DefaultWriteTimeout = 2 * time.Second

// ErrBadSocket is returned when NOTIFY_SOCKET names neither an absolute path
// nor an abstract ('@') socket.
var ErrBadSocket = errors.New("sdnotify: NOTIFY_SOCKET is not an absolute path or @abstract name")

// Notify sends state (newline-separated VAR=value assignments, see
// sd_notify(3)) to the socket named by $NOTIFY_SOCKET. It returns nil without
// doing anything when the variable is unset.
func Notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	var addr *net.UnixAddr
	switch {
	case strings.HasPrefix(name, "@"):
		// Abstract namespace: Go maps a leading '@' to the leading NUL byte.
		addr = &net.UnixAddr{Name: name, Net: "unixgram"}
	case strings.HasPrefix(name, "/"):
		addr = &net.UnixAddr{Name: name, Net: "unixgram"}
	default:
		// systemd also allows vsock: addresses (VMs); the daemon does not run there.
		return fmt.Errorf("%w: %q", ErrBadSocket, name)
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("sdnotify: dial %s: %w", name, err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(DefaultWriteTimeout)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: send to %s: %w", name, err)
	}
	return nil
}

// Ready reports that start-up (or a reload) is complete: READY=1.
func Ready() error { return Notify("READY=1") }

// Reloading reports that a configuration reload has begun. systemd's
// Type=notify-reload requires MONOTONIC_USEC (CLOCK_MONOTONIC in
// microseconds) alongside RELOADING=1; plain Type=notify accepts it too.
// Send Ready when the reload is done, whether it succeeded or not.
func Reloading() error {
	return Notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatUint(monotonicUsec(), 10))
}

// Stopping reports that shutdown has begun: STOPPING=1.
func Stopping() error { return Notify("STOPPING=1") }

// Status sets the free-form status line shown by `systemctl status`.
// Newlines in msg would start new assignments, so they become spaces.
func Status(msg string) error {
	return Notify("STATUS=" + strings.NewReplacer("\r", " ", "\n", " ").Replace(msg))
}
