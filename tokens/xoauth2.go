package tokens

import (
	"encoding/base64"

	"github.com/emersion/go-sasl"
)

// XOAUTH2 is the SASL mechanism name used by Microsoft and Google.
const XOAUTH2 = "XOAUTH2"

// XOAUTH2InitialResponse returns the raw (not base64) XOAUTH2 initial
// response: "user=" user ^A "auth=Bearer " token ^A ^A.
func XOAUTH2InitialResponse(user, token string) []byte {
	return []byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

// XOAUTH2Base64 is XOAUTH2InitialResponse, standard base64 with padding on
// one line, as IMAP, POP3 and SMTP send it.
func XOAUTH2Base64(user, token string) string {
	return base64.StdEncoding.EncodeToString(XOAUTH2InitialResponse(user, token))
}

// XOAUTH2Client is a sasl.Client for XOAUTH2. After a failure the server's
// JSON error challenge is kept in Challenge for logging.
type XOAUTH2Client struct {
	User, Token string
	Challenge   []byte
}

var _ sasl.Client = (*XOAUTH2Client)(nil)

// NewXOAUTH2Client returns a sasl.Client that authenticates user with an
// OAuth 2.0 bearer token.
func NewXOAUTH2Client(user, token string) *XOAUTH2Client {
	return &XOAUTH2Client{User: user, Token: token}
}

// Start implements sasl.Client.
func (c *XOAUTH2Client) Start() (string, []byte, error) {
	return XOAUTH2, XOAUTH2InitialResponse(c.User, c.Token), nil
}

// Next receives the server's error challenge. XOAUTH2 requires an empty
// response, after which the server sends its final failure. Return []byte{},
// never nil: go-smtp's Client.Auth treats a nil response as success.
func (c *XOAUTH2Client) Next(challenge []byte) ([]byte, error) {
	c.Challenge = append([]byte(nil), challenge...)
	return []byte{}, nil
}
