package tokens

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"path/filepath"
)

// DerivedKey returns a 32-byte key for purpose (e.g. "imap uid map"),
// derived with HKDF-SHA256 from the token store's key (the
// token-store-key credential or state_dir/key). Other state the bridge
// keeps beside the token store is encrypted under such a key, so it is
// protected like the tokens and needs no key of its own, yet one purpose's
// key never decrypts another's data.
func (m *Manager) DerivedKey(purpose string) ([]byte, error) {
	kf := m.opts.KeyFile
	if kf == "" {
		m.mu.RLock()
		kf = filepath.Join(m.cfg.StateDir, KeyFileName)
		m.mu.RUnlock()
	}
	key, err := loadKey(kf, false, "the token store")
	if err != nil {
		return nil, err
	}
	defer clear(key)
	out, err := hkdf.Key(sha256.New, key, nil, "oauthbridge "+purpose, KeySize)
	if err != nil {
		return nil, fmt.Errorf("tokens: derive the %s key: %w", purpose, err)
	}
	return out, nil
}
