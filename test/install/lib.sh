# shellcheck shell=bash
# Shared by test/install/run.sh (the service run by hand exactly as the unit
# would) and test/install/in-container.sh (the service run by a real systemd
# booted as PID 1 in a container): the sysadmin's setup against the fake
# Microsoft 365 and the legacy clients' checks.
#
# The caller sets T (a work dir), RESULTS, FAKEIDP (the fakeidp binary) and
# the ports P_IMAP P_IMAPS P_POP3 P_SMTP P_ADMIN, and defines svc_log (prints
# the service's log so far).

UNIT=/lib/systemd/system/oauthbridge.service
DROPIN_DIR=/etc/systemd/system/oauthbridge.service.d
DROPIN=$DROPIN_DIR/credentials.conf
CREDS=/etc/oauthbridge/credentials
CONF=/etc/oauthbridge/config.hcl
# Outside /tmp: PrivateTmp=yes would hide it from the service.
FAKE_CA=/etc/oauthbridge/test-fake-ca.pem
DOMAIN=contoso.test

pass() { echo "PASS $1" | tee -a "$RESULTS"; }
fail() { echo "FAIL $1: $(echo "$2" | tr -s '\n\t ' ' ' | cut -c1-500)" | tee -a "$RESULTS"; }
# expect NAME CMD...: PASS when CMD succeeds, else FAIL with its output.
expect() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

# check_installed: what the package put on disk (after dpkg -i).
check_installed() {
	local uid
	expect "binary is static" sh -c 'ldd /usr/bin/oauthbridge 2>&1 | grep -q "not a dynamic executable"'
	if [ -n "${DEBVER:-}" ]; then
		expect "version stamped ($DEBVER)" sh -c "/usr/bin/oauthbridge version | grep -F -- '$DEBVER'"
	fi
	expect "unit installed" test -f "$UNIT"
	expect "unit ExecStart names /usr/bin/oauthbridge" grep -q '^ExecStart=/usr/bin/oauthbridge ' "$UNIT"
	expect "sysusers.d file" test -f /usr/lib/sysusers.d/oauthbridge.conf
	expect "man page" test -f /usr/share/man/man8/oauthbridge.8.gz
	expect "config.hcl is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' oauthbridge | grep -q ' $CONF '"
	uid=$(id -u oauthbridge 2>/dev/null || echo none)
	if [ "$uid" != none ] && [ "$uid" -lt 1000 ] && [ "$uid" -gt 0 ]; then pass "system user oauthbridge (uid $uid)"; else fail "system user oauthbridge" "uid=$uid"; fi
	expect "service user has no login shell" sh -c 'getent passwd oauthbridge | grep -Eq ":/(usr/)?s?bin/(nologin|false)$"'
	expect "config.hcl root:oauthbridge 0640" sh -c "[ \"\$(stat -c '%U:%G %a' $CONF)\" = 'root:oauthbridge 640' ]"
	expect "credentials dir root 0700" sh -c "[ \"\$(stat -c '%U:%G %a' $CREDS)\" = 'root:root 700' ]"
}

# setup_admin: the fake Microsoft 365, then what a sysadmin does after
# installing: secrets in $CREDS, a drop-in that uncomments the unit's
# LoadCredential= lines, and config.hcl (TLS from credentials).
setup_admin() {
	local n
	CLIENT_SECRET="cs-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	ADMIN_PW="admin-$RANDOM$RANDOM"
	USER_PW="pw-$RANDOM$RANDOM"
	"$FAKEIDP" -listen 127.0.0.1:0 -url-file "$T/idp.url" -env-file "$T/fake.env" -log "$T/fakeidp.log" \
		-app "bridge-app:$CLIENT_SECRET" -user "alice@$DOMAIN" -user "bob@$DOMAIN" \
		-mailbox "alice@$DOMAIN" -mailbox "bob@$DOMAIN" -mailbox "helpdesk@$DOMAIN=alice@$DOMAIN" >>"$T/fakeidp.log" 2>&1 &
	IDP_PID=$!
	for _ in $(seq 100); do [ -s "$T/idp.url" ] && [ -s "$T/fake.env" ] && break; sleep 0.1; done
	IDP_URL=$(cat "$T/idp.url")
	# shellcheck disable=SC1091
	. "$T/fake.env"
	install -m 0644 "$FAKE_CA_FILE" "$FAKE_CA"

	# Secrets, root-only, where the unit's LoadCredential= lines look.
	(
		umask 077
		printf '%s\n' "$CLIENT_SECRET" >"$CREDS/client-secret"
		printf '%s\n' "$ADMIN_PW" | /usr/bin/oauthbridge hash-password >"$CREDS/admin-password-hash"
		head -c 32 /dev/urandom >"$CREDS/token-store-key"
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bridge.test \
			-addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$CREDS/tls-key" -out "$CREDS/tls-cert" 2>"$T/openssl.log"
	)
	cp "$CREDS/tls-cert" "$T/bridge-ca.pem"
	USER_HASH=$(printf '%s\n' "$USER_PW" | /usr/bin/oauthbridge hash-password)
	expect "credentials are root-only files" sh -c "[ -z \"\$(find $CREDS -type f ! -perm 0600)\" ] && [ -z \"\$(find $CREDS ! -user root)\" ]"

	# The drop-in a sysadmin writes with `systemctl edit oauthbridge`: the
	# unit's commented LoadCredential= lines, uncommented.
	install -d -m 0755 "$DROPIN_DIR"
	{ echo "[Service]"; sed -n 's/^#\(LoadCredential=[a-z-]*:\/etc\/oauthbridge\/credentials\/[a-z-]*\)$/\1/p' "$UNIT"; } >"$DROPIN"
	n=$(grep -c '^LoadCredential=' "$DROPIN" || true)
	if [ "$n" = 5 ]; then pass "unit names 5 credentials under $CREDS"; else fail "unit names 5 credentials" "$(cat "$DROPIN")"; fi

	# The configuration, written over the conffile as an editor does (owner and mode stay).
	cat >"$CONF" <<EOF
state_dir = "/var/lib/oauthbridge"
imap {
  listen     = ["127.0.0.1:$P_IMAP"]
  listen_tls = ["127.0.0.1:$P_IMAPS"]
}
pop3 {
  listen = ["127.0.0.1:$P_POP3"]
}
smtp {
  listen = ["127.0.0.1:$P_SMTP"]
  domain = "bridge.test"
}
tls {
  cert_file = credential_path("tls-cert")
  key_file  = credential_path("tls-key")
}
admin {
  listen        = "127.0.0.1:$P_ADMIN"
  public_url    = "http://127.0.0.1:$P_ADMIN"
  password_hash = credential("admin-password-hash")
}
provider "contoso" {
  tenant        = "$DOMAIN"
  client_id     = "bridge-app"
  client_secret = credential("client-secret")
  authority     = "$IDP_URL"
  imap_server   = "$FAKE_IMAP"
  pop3_server   = "$FAKE_POP3"
  smtp_server   = "$FAKE_SMTP"
  ca_file       = "$FAKE_CA"
}
account "helpdesk" {
  provider = "contoso"
  mailbox  = "helpdesk@$DOMAIN"
  delegate = "alice@$DOMAIN"
}
user "legacy" {
  password_hash = "$USER_HASH"
  account       = "helpdesk"
}
EOF
	expect "config.hcl still root:oauthbridge 0640 after editing" sh -c "[ \"\$(stat -c '%U:%G %a' $CONF)\" = 'root:oauthbridge 640' ]"
	expect "check from a root shell (credentials from $CREDS)" admin_cli check
	# As the README prints it: no CREDENTIALS_DIRECTORY, the CLI reads /etc/oauthbridge/credentials.
	expect "check from a root shell without CREDENTIALS_DIRECTORY" env -u CREDENTIALS_DIRECTORY /usr/bin/oauthbridge check
}

# admin_cli: the admin's root shell, with the credentials the unit loads.
admin_cli() { env CREDENTIALS_DIRECTORY="$CREDS" OAUTHBRIDGE_ADMIN_PASSWORD="$ADMIN_PW" /usr/bin/oauthbridge "$@"; }

# login_and_clients: with the service running, sign in from a root shell
# through the daemon, then every legacy protocol from 127.0.0.1.
login_and_clients() {
	local code= lrc login_pid out
	admin_cli login helpdesk >"$T/login.out" 2>&1 &
	login_pid=$!
	for _ in $(seq 100); do
		code=$(awk '/enter the code/ { f = 1; next } f && NF { print $1; exit }' "$T/login.out")
		[ -n "$code" ] && break
		sleep 0.1
	done
	if [ -n "$code" ] && curl -sf -X POST --data-urlencode "code=$code" --data-urlencode "upn=alice@$DOMAIN" "$IDP_URL/test/approve" >/dev/null; then
		lrc=0
		wait "$login_pid" || lrc=$?
		if [ "$lrc" = 0 ]; then pass "login helpdesk through the daemon (device code)"; else fail "login helpdesk" "exit $lrc: $(cat "$T/login.out")"; fi
	else
		kill "$login_pid" 2>/dev/null || true
		fail "login helpdesk: device code" "$(cat "$T/login.out")"
	fi

	expect "IMAP login + LIST" sh -c "curl -sS --max-time 20 -u 'legacy:$USER_PW' imap://127.0.0.1:$P_IMAP/ | grep -q INBOX"
	expect "IMAP STARTTLS with the credential's certificate" sh -c "curl -sS --max-time 20 --ssl-reqd --cacert $T/bridge-ca.pem -u 'legacy:$USER_PW' imap://127.0.0.1:$P_IMAP/ | grep -q INBOX"
	expect "IMAPS (implicit TLS) with the credential's key" sh -c "curl -sS --max-time 20 --cacert $T/bridge-ca.pem -u 'legacy:$USER_PW' imaps://127.0.0.1:$P_IMAPS/ | grep -q INBOX"
	expect "IMAP wrong password refused" sh -c "! curl -sS --max-time 20 -u 'legacy:wrong' imap://127.0.0.1:$P_IMAP/"
	expect "POP3 login + LIST" curl -sS --max-time 20 -u "legacy:$USER_PW" "pop3://127.0.0.1:$P_POP3/"
	printf 'From: helpdesk@%s\r\nTo: bob@%s\r\nSubject: install test\r\n\r\nhello from the packaged bridge\r\n' "$DOMAIN" "$DOMAIN" >"$T/msg.eml"
	expect "SMTP AUTH + send (250 only after upstream accepted)" curl -sS --max-time 20 -u "legacy:$USER_PW" \
		--mail-from "helpdesk@$DOMAIN" --mail-rcpt "bob@$DOMAIN" --upload-file "$T/msg.eml" "smtp://127.0.0.1:$P_SMTP"

	# The admin's view from a root shell.
	if out=$(admin_cli status -json 2>&1) && echo "$out" | tr -d ' \n' | grep '"account":"helpdesk".*"state":"ok"' >/dev/null; then
		pass "status from a root shell: helpdesk ok, exit 0"
	else
		fail "status from a root shell" "$out"
	fi
	expect "check from a root shell beside the running service" admin_cli check
	expect "token store owned by oauthbridge, 0600 (UMask=0077)" sh -c "[ \"\$(stat -c '%U %a' /var/lib/oauthbridge/tokens.enc)\" = 'oauthbridge 600' ]"
	expect "store key from the token-store-key credential (no state_dir/key)" test ! -e /var/lib/oauthbridge/key
	svc_log >"$T/service.log" 2>&1
	expect "no secret in the service log" sh -c "! grep -F -e '$CLIENT_SECRET' -e '$USER_PW' -e '$ADMIN_PW' $T/service.log"
}
