package fakems

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
)

// RouteGetMailFolder is GET /v1.0/{m}/mailFolders/{folder}: a read of one
// well-known folder, which `oauthbridge doctor` uses to check that Graph
// lets the account's token into the mailbox without sending anything.
const RouteGetMailFolder = "getMailFolder"

// wellKnownFolders maps Graph's well-known folder names to the fake's.
var wellKnownFolders = map[string]string{
	"inbox":        "INBOX",
	"drafts":       "Drafts",
	"sentitems":    "Sent Items",
	"deleteditems": "Deleted Items",
	"junkemail":    "Junk Email",
}

// handleGetMailFolder answers {id, displayName, totalItemCount} for a
// well-known folder. Permission as for drafts (checkReadWrite): the token
// asks for Mail.ReadWrite, which covers reading; Mail.Read alone is not
// modelled.
func (f *Fake) handleGetMailFolder(w http.ResponseWriter, r *http.Request, g *graphReq) {
	if !f.checkReadWrite(w, g) {
		return
	}
	name, ok := wellKnownFolders[strings.ToLower(r.PathValue("folder"))]
	if !ok {
		f.graphError(w, http.StatusBadRequest, "ErrorInvalidIdMalformed", "Id is malformed.")
		return
	}
	f.storeMu.Lock()
	msgs, err := g.mb.folderMessagesLocked(name)
	f.storeMu.Unlock()
	if err != nil {
		f.graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	id := sha256.Sum256([]byte(g.mb.addr + "\x00" + name))
	f.graphJSON(w, http.StatusOK, map[string]any{
		"id":             base64.RawURLEncoding.EncodeToString(id[:18]),
		"displayName":    name,
		"totalItemCount": len(msgs),
	})
}
