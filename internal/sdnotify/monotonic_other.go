//go:build !linux

package sdnotify

// monotonicUsec is 0 off Linux, where there is no systemd to notify.
func monotonicUsec() uint64 { return 0 }
