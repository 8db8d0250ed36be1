// Package aside runs a deep but short piece of a long-lived goroutine's
// work (a login: password check, token, TLS handshake, a Graph request and
// its JSON) on a goroutine of its own.
//
// A goroutine's stack grows to what its deepest call needed and shrinks
// only when the garbage collector finds it mostly unused, one halving per
// cycle. A session goroutine that logs in and then waits for hours (IMAP
// IDLE) would keep a 16-32 KiB stack through a burst of logins; run
// aside, that stack is freed for the next login as soon as this one is
// over, and the session's goroutine keeps the small stack it had.
package aside

import (
	"fmt"
	"runtime/debug"
)

// Run runs f on a new goroutine and returns its result. A panic in f is
// raised again on the caller's goroutine (where the session's recover
// logs it), with f's stack in its value.
func Run[T any](f func() T) T {
	type result struct {
		v        T
		panicked any
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if v := recover(); v != nil {
				r.panicked = fmt.Sprintf("%v\n\ngoroutine run aside:\n%s", v, debug.Stack())
			}
			ch <- r
		}()
		r.v = f()
	}()
	r := <-ch
	if r.panicked != nil {
		panic(r.panicked)
	}
	return r.v
}
