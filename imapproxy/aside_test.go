package imapproxy

import (
	"strings"
	"testing"
)

func TestAside(t *testing.T) {
	for _, want := range []bool{true, false} {
		if got := aside(func() bool { return want }); got != want {
			t.Errorf("aside() = %v, want %v", got, want)
		}
	}
	// A panic of the login reaches the session's goroutine (where the
	// front door recovers and logs it) with the login's stack.
	defer func() {
		v := recover()
		s, _ := v.(string)
		if !strings.HasPrefix(s, "boom\n") || !strings.Contains(s, "TestAside") {
			t.Errorf("recovered %v, want the login's panic with its stack", v)
		}
	}()
	aside(func() bool { panic("boom") })
	t.Error("aside returned after a panic")
}
