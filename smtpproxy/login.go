package smtpproxy

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// loginServer is the server side of the obsolete but still common SASL LOGIN
// mechanism (draft-murchison-sasl-login), which go-sasl does not provide.
// Clients send the user name either as the initial response
// ("AUTH LOGIN dXNlcg==") or after a "Username:" challenge, then the password
// after "Password:".
type loginServer struct {
	step         int // 0: start, 1: waiting for the user name, 2: waiting for the password, 3: done
	user         string
	authenticate func(user, pass string) error
}

var _ sasl.Server = (*loginServer)(nil)

var errLoginUnexpected = errors.New("smtpproxy: unexpected LOGIN response")

func newLoginServer(auth func(user, pass string) error) *loginServer {
	return &loginServer{authenticate: auth}
}

// Next implements sasl.Server. A nil response means the client sent no
// initial response.
func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		if response == nil {
			s.step = 1
			return []byte("Username:"), false, nil
		}
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 1:
		s.user = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.authenticate(s.user, string(response))
	}
	return nil, true, errLoginUnexpected
}
