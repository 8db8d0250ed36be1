package fakems

import (
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Certificate credentials: an app may register certificates and
// authenticate with a signed client assertion (RFC 7523) instead of a
// secret, as in Entra's Certificates & secrets → Certificates.
const (
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// AssertionClockSkew is the leeway the fake allows on exp and nbf
	// (Entra allows a few minutes; the exact figure is not documented).
	AssertionClockSkew = 5 * time.Minute
)

// AADSTS codes of certificate credentials. 700027 and 700024 are the codes
// Entra returns (their texts below follow Entra's). 50027 (InvalidJwtToken,
// whose documented causes include an unexpected audience) is the fake's
// choice for a wrong audience, issuer or subject and a missing jti.
//
// A client assertion sent again (same jti) before its exp is accepted, as
// Entra does: Microsoft's own libraries send one assertion for many token
// requests. MSAL for Python keeps the assertion it signed until a minute
// before it expires (msal/oauth2cli/assertion.py, AutoRefresher), and
// MSAL.NET's WithClientAssertion(string) sends one fixed assertion whose
// only reported failure is AADSTS700024 once its exp passed (MSAL.NET
// issue #4775, azure-docs issue #65990). The fake counts such reuses
// (ReusedAssertions) so tests can show the bridge signs a fresh one for
// each request.
const (
	aadstsCertKey      = 700027
	aadstsAssertTime   = 700024
	aadstsInvalidJWT   = 50027
	aadstsUnsupportAlg = 5002738 // Entra's "'X' is not a supported signature algorithm" (as reported by users)
)

// RegisterCertificate uploads cert to the app registration clientID
// (Certificates & secrets → Certificates). The app then accepts client
// assertions signed with cert's key while cert is valid (its validity is
// the key credential's start and end, as the portal sets them).
func (f *Fake) RegisterCertificate(clientID string, cert *x509.Certificate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.appCerts == nil {
		f.appCerts = map[string][]*x509.Certificate{}
	}
	f.appCerts[clientID] = append(f.appCerts[clientID], cert)
}

// RemoveCertificate deletes the certificate with the SHA-1 thumbprint
// (upper-case hex) from the app registration clientID.
func (f *Fake) RemoveCertificate(clientID, thumbprint string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keep []*x509.Certificate
	for _, c := range f.appCerts[clientID] {
		sum := sha1.Sum(c.Raw)
		if !strings.EqualFold(hexUpper(sum[:]), thumbprint) {
			keep = append(keep, c)
		}
	}
	f.appCerts[clientID] = keep
}

func hexUpper(b []byte) string {
	const digits = "0123456789ABCDEF"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func (f *Fake) hasCertificates(clientID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.appCerts[clientID]) > 0
}

// assertionAuth authenticates a client by its client_assertion: the
// certificate named by x5t#S256 (or x5t) must be registered on the app and
// valid, the signature must verify with it, aud must be this token
// endpoint, iss and sub the client ID, the time now within nbf..exp, and
// a jti present (one seen before is accepted and counted).
func (f *Fake) assertionAuth(r *http.Request, a *app) (*app, *aadError) {
	if t := r.PostForm.Get("client_assertion_type"); t != clientAssertionType {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_assertion_type' with the value '%s'.", clientAssertionType)
	}
	raw := r.PostForm.Get("client_assertion")
	if raw == "" {
		return nil, newAADError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_assertion'.")
	}
	now := f.now()
	claims := jwt.MapClaims{}
	tok, _, err := jwt.NewParser().ParseUnverified(raw, claims)
	if err != nil {
		return nil, newAADError(401, "invalid_client", aadstsInvalidJWT, "Invalid JWT token. The token is malformed.")
	}
	cert, thumb := f.findCert(a.id, tok.Header)
	if cert == nil {
		return nil, newAADError(401, "invalid_client", aadstsCertKey, "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]", thumb, a.id)
	}
	found := "Found key 'Start=" + cert.NotBefore.UTC().Format("01/02/2006 15:04:05") + ", End=" + cert.NotAfter.UTC().Format("01/02/2006 15:04:05") + "'"
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return nil, newAADError(401, "invalid_client", aadstsCertKey, "Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '%s', %s]", thumb, found)
	}
	switch alg, _ := tok.Header["alg"].(string); alg {
	case "RS256", "PS256":
	default:
		return nil, newAADError(401, "invalid_client", aadstsUnsupportAlg, "Invalid JWT token. '%s' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, PS256'.", alg)
	}
	pub, _ := cert.PublicKey.(*rsa.PublicKey)
	_, err = jwt.NewParser(jwt.WithValidMethods([]string{"RS256", "PS256"}), jwt.WithoutClaimsValidation()).
		Parse(raw, func(*jwt.Token) (any, error) { return pub, nil })
	if err != nil {
		return nil, newAADError(401, "invalid_client", aadstsCertKey, "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '%s', %s]", thumb, found)
	}
	aud, _ := claims["aud"].(string)
	if want := f.AuthorityURL + r.URL.Path; aud != want {
		return nil, newAADError(401, "invalid_client", aadstsInvalidJWT, "Invalid JWT token. The audience '%s' is not this token endpoint ('%s').", aud, want)
	}
	iss, _ := claims["iss"].(string)
	sub, _ := claims["sub"].(string)
	if iss != a.id || sub != a.id {
		return nil, newAADError(401, "invalid_client", aadstsInvalidJWT, "Invalid JWT token. The issuer and subject of a client assertion must be the client ID '%s'.", a.id)
	}
	exp, errExp := claims.GetExpirationTime()
	nbf, errNbf := claims.GetNotBefore()
	if errExp != nil || errNbf != nil || exp == nil {
		return nil, newAADError(401, "invalid_client", aadstsInvalidJWT, "Invalid JWT token. The client assertion needs a numeric exp claim.")
	}
	if now.After(exp.Add(AssertionClockSkew)) || (nbf != nil && now.Before(nbf.Add(-AssertionClockSkew))) {
		from := "(none)"
		if nbf != nil {
			from = nbf.UTC().Format(time.RFC3339)
		}
		return nil, newAADError(401, "invalid_client", aadstsAssertTime, "Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s.", now.UTC().Format(time.RFC3339), from, exp.UTC().Format(time.RFC3339))
	}
	jti, _ := claims["jti"].(string)
	if err := f.noteJTI(a.id, jti, exp.Add(AssertionClockSkew), now); err != nil {
		return nil, newAADError(401, "invalid_client", aadstsInvalidJWT, "Invalid JWT token. %v", err)
	}
	return a, nil
}

// findCert returns the app's registered certificate named by the header's
// x5t#S256 (preferred) or x5t, and the SHA-1 thumbprint the client named.
func (f *Fake) findCert(clientID string, h map[string]any) (*x509.Certificate, string) {
	s256, _ := h["x5t#S256"].(string)
	s1, _ := h["x5t"].(string)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.appCerts[clientID] {
		sum256 := sha256.Sum256(c.Raw)
		sum1 := sha1.Sum(c.Raw)
		if (s256 != "" && s256 == base64.RawURLEncoding.EncodeToString(sum256[:])) ||
			(s256 == "" && s1 != "" && s1 == base64.RawURLEncoding.EncodeToString(sum1[:])) {
			return c, hexUpper(sum1[:])
		}
	}
	if b, err := base64.RawURLEncoding.DecodeString(s1); err == nil && s1 != "" {
		return nil, hexUpper(b)
	}
	return nil, ""
}

// noteJTI records jti until its assertion expires and counts a jti seen
// before (ReusedAssertions); only a missing jti is refused.
func (f *Fake) noteJTI(clientID, jti string, until, now time.Time) error {
	if jti == "" {
		return errors.New("the client assertion has no jti claim")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.jtis == nil {
		f.jtis = map[string]time.Time{}
	}
	for k, t := range f.jtis {
		if now.After(t) {
			delete(f.jtis, k)
		}
	}
	key := clientID + "\x00" + jti
	if _, seen := f.jtis[key]; seen {
		f.reusedJTIs++
		return nil
	}
	f.jtis[key] = until
	return nil
}

// ReusedAssertions is how many token requests carried a client assertion
// whose jti an earlier request had sent (accepted, as Entra does; see
// aadstsInvalidJWT's comment). The bridge signs a fresh assertion for every
// request, so its tests expect 0.
func (f *Fake) ReusedAssertions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reusedJTIs
}
