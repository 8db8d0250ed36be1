#!/usr/bin/env python3
"""Python side of the real-peer suite (test/peers/run.sh).

Subcommands (all configuration comes from the environment run.sh exports):

  seed MAILBOX SUBJECT [--attach FILE]   deliver one message over Dovecot's LMTP
  upstream                               prove Dovecot/Postfix directly (tokens from fakeidp)
  python                                 imaplib / poplib / smtplib scenarios through the bridge
  find USER PASSWORD SUBJECT [FOLDER]    wait until a message with SUBJECT is in FOLDER (bridge IMAP)
  imap-login USER PASSWORD               one login through the bridge; prints OK or the server's answer
  pop3-login USER PASSWORD               the same over POP3
  graph                                  imaplib scenarios against the account served from Microsoft Graph
  graph-seed SUBJECT [USER [FILE]]       send one message (FILE attached) to a Graph-served account (gr)
                                         through the bridge
                                         (SMTP, send_via = "graph"): it lands in the fake's mailbox
  graph-pop                              poplib against an account served from the fake's Graph
                                         (read_via = "graph"; mail put in with fakeidp /test/deliver)
  hold USER PASSWORD                     log in, SELECT, then wait for a line on stdin, then NOOP
                                         and report how the session ended (upstream restart)

Result lines: "PASS client scenario" or "FAIL client scenario: why".
"""

import base64
import email
import email.policy
import hashlib
import imaplib
import json
import os
import poplib
import random
import smtplib
import socket
import ssl
import string
import sys
import time
import urllib.parse
import urllib.request
from email.message import EmailMessage

ENV = os.environ
DOMAIN = ENV.get("DOMAIN", "contoso.test")
HOST = "127.0.0.1"
WAIT = 15  # seconds a scenario waits for mail to arrive or IDLE to wake up


def result(ok, client, scenario, why=""):
    line = ("PASS " if ok else "FAIL ") + client + " " + scenario
    if not ok and why:
        line += ": " + " ".join(str(why).split())[:400]
    print(line, flush=True)
    return ok


def scenario(client, name):
    """Decorator-free helper: run fn, print PASS/FAIL, never raise."""

    def run(fn, *args):
        try:
            ok, why = fn(*args)
        except Exception as e:  # a client library error is a failure, not a crash of the suite
            ok, why = False, "%s: %s" % (type(e).__name__, e)
        return result(ok, client, name, why)

    return run


def tag():
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def build_message(frm, to, subject, attach=None, body="Hello from the real-peer suite.\n"):
    m = EmailMessage()
    m["From"] = frm
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = "<%s@peers.test>" % tag()
    m["Date"] = email.utils.formatdate(localtime=False)
    m.set_content(body)
    if attach is not None:
        m.add_attachment(attach, maintype="application", subtype="octet-stream", filename="data.bin")
    return m.as_bytes()


def seed(mailbox, subject, attach_file=None):
    attach = open(attach_file, "rb").read() if attach_file else None
    raw = build_message("seeder@" + DOMAIN, mailbox, subject, attach)
    lmtp = smtplib.LMTP(ENV["LMTP_SOCKET"])
    try:
        lmtp.sendmail("seeder@" + DOMAIN, [mailbox], raw)
    finally:
        lmtp.quit()


# ---- bridge connections ----


def bimap():
    return imaplib.IMAP4(HOST, int(ENV["B_IMAP"]), timeout=30)


def blogin(user, pw):
    m = bimap()
    m.login(user, pw)
    typ, data = m.capability()  # imaplib keeps the pre-login list otherwise
    m.capabilities = tuple(data[-1].decode().upper().split())
    return m


def uids_by_subject(m, subject):
    typ, data = m.uid("SEARCH", None, "SUBJECT", '"%s"' % subject)
    if typ != "OK":
        raise RuntimeError("SEARCH: %s %s" % (typ, data))
    return data[0].split()


def wait_subject(user, pw, subject, folder="INBOX", timeout=WAIT):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            m = blogin(user, pw)
            try:
                m.select(folder, readonly=True)
                u = uids_by_subject(m, subject)
                if u:
                    typ, data = m.uid("FETCH", u[0], "(BODY.PEEK[])")
                    return data[0][1]
            finally:
                m.logout()
        except Exception as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError("no message %r in %s after %ss (last error: %s)" % (subject, folder, timeout, last))


# ---- upstream (direct) checks ----


def idp(path, **form):
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(ENV["IDP_URL"] + path, data=data, timeout=10) as r:
        return json.load(r)


def xoauth2(user, token):
    return ("user=%s\x01auth=Bearer %s\x01\x01" % (user, token)).encode()


def upstream():
    ctx = ssl.create_default_context(cafile=ENV["CA_FILE"])
    alice = idp("/test/token", upn="alice@" + DOMAIN)["access_token"]
    bob = idp("/test/token", upn="bob@" + DOMAIN)["access_token"]
    shared = "helpdesk@" + DOMAIN

    def imap_auth(user, token):
        m = imaplib.IMAP4_SSL(HOST, int(ENV["IMAPS_PORT"]), ssl_context=ctx, timeout=20)
        try:
            m.authenticate("XOAUTH2", lambda _: xoauth2(user, token))
            typ, _ = m.select("INBOX")
            return typ == "OK"
        except imaplib.IMAP4.error:
            return False
        finally:
            try:
                m.logout()
            except Exception:
                pass

    scenario("upstream", "dovecot-own-token")(lambda: (imap_auth("alice@" + DOMAIN, alice), "alice's token refused for alice"))
    scenario("upstream", "dovecot-delegate-token")(lambda: (imap_auth(shared, alice), "delegate's token refused for the shared mailbox"))
    scenario("upstream", "dovecot-other-token-refused")(lambda: (not imap_auth(shared, bob), "bob's token opened the shared mailbox"))
    scenario("upstream", "dovecot-bogus-token-refused")(lambda: (not imap_auth("alice@" + DOMAIN, "not-a-token"), "bogus token accepted"))

    def imap_password():
        m = imaplib.IMAP4_SSL(HOST, int(ENV["IMAPS_PORT"]), ssl_context=ctx, timeout=20)
        try:
            caps = m.capabilities
            try:
                m.login("alice@" + DOMAIN, "password")
                return False, "password LOGIN accepted"
            except imaplib.IMAP4.error:
                return "AUTH=XOAUTH2" in caps, "capabilities %s" % (caps,)
        finally:
            m.shutdown()

    scenario("upstream", "dovecot-password-refused")(imap_password)

    def pop3():
        p = poplib.POP3_SSL(HOST, int(ENV["POP3S_PORT"]), context=ctx, timeout=20)
        try:
            p._shortcmd("AUTH XOAUTH2")
            p._shortcmd(base64.b64encode(xoauth2(shared, alice)).decode())
            p.stat()
            return True, ""
        finally:
            p.quit()

    scenario("upstream", "dovecot-pop3-xoauth2")(pop3)

    def smtp_flow():
        s = smtplib.SMTP(HOST, int(ENV["SUBMIT_PORT"]), timeout=20)
        try:
            s.ehlo()
            if s.has_extn("auth"):
                return False, "AUTH offered before STARTTLS"
            s.starttls(context=ctx)
            s.ehlo()
            if "XOAUTH2" not in s.esmtp_features.get("auth", ""):
                return False, "no AUTH XOAUTH2 after STARTTLS"
            code, msg = s.docmd("AUTH", "XOAUTH2 " + base64.b64encode(xoauth2(shared, alice)).decode())
            if code != 235:
                return False, "AUTH: %s %s" % (code, msg)
            subj = "upstream-" + tag()
            s.sendmail("support@" + DOMAIN, [shared], build_message("support@" + DOMAIN, shared, subj))
            try:
                s.sendmail("bob@" + DOMAIN, [shared], build_message("bob@" + DOMAIN, shared, "spoof"))
                return False, "Postfix accepted a spoofed sender"
            except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused):
                pass
            return True, ""
        finally:
            s.quit()

    scenario("upstream", "postfix-starttls-xoauth2-sender-maps")(smtp_flow)


# ---- python clients through the bridge ----


def python_scenarios():
    user, pw = "py", ENV["PW_py"]
    box = "helpdesk@" + DOMAIN
    run = {}
    t = tag()
    subj = {k: "py-%s-%s" % (k, t) for k in ("one", "two", "three", "attach")}
    attach = os.urandom(48 * 1024)
    att_file = os.path.join(ENV["T"], "py-attach.bin")
    open(att_file, "wb").write(attach)
    for k in ("one", "two", "three"):
        seed(box, subj[k])
    seed(box, subj["attach"], att_file)

    def read_inbox():
        m = blogin(user, pw)
        try:
            typ, data = m.select("INBOX")
            n = int(data[0])
            typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            got = b" ".join(x[1] for x in data if isinstance(x, tuple)).decode()
            missing = [s for s in subj.values() if s not in got]
            return not missing and n >= 4, "missing %s of %d messages" % (missing, n)
        finally:
            m.logout()

    def fetch_attachment():
        m = blogin(user, pw)
        try:
            m.select("INBOX", readonly=True)
            u = uids_by_subject(m, subj["attach"])
            typ, data = m.uid("FETCH", u[0], "(BODY.PEEK[])")
            msg = email.message_from_bytes(data[0][1], policy=email.policy.default)
            parts = [p for p in msg.iter_attachments()]
            if not parts:
                return False, "no attachment part"
            got = parts[0].get_content()
            return hashlib.sha256(got).digest() == hashlib.sha256(attach).digest(), "attachment differs (%d bytes vs %d)" % (len(got), len(attach))
        finally:
            m.logout()

    def mark_seen():
        m = blogin(user, pw)
        try:
            m.select("INBOX")
            u = uids_by_subject(m, subj["one"])
            m.uid("STORE", u[0], "+FLAGS", "(\\Seen)")
        finally:
            m.logout()
        m = blogin(user, pw)
        try:
            m.select("INBOX", readonly=True)
            typ, data = m.uid("FETCH", u[0], "(FLAGS)")
            return b"\\Seen" in data[0], "flags after reconnect: %s" % data
        finally:
            m.logout()

    def move():
        m = blogin(user, pw)
        try:
            m.select("INBOX")
            u = uids_by_subject(m, subj["two"])
            if "MOVE" in m.capabilities:
                typ, data = m.uid("MOVE", u[0], "Archive")
            else:
                m.uid("COPY", u[0], "Archive")
                m.uid("STORE", u[0], "+FLAGS", "(\\Deleted)")
                typ, data = m.expunge()
            if typ != "OK":
                return False, "MOVE: %s %s" % (typ, data)
            left = uids_by_subject(m, subj["two"])
            m.select("Archive", readonly=True)
            there = uids_by_subject(m, subj["two"])
            return not left and len(there) == 1, "inbox still has %s, Archive has %s" % (left, there)
        finally:
            m.logout()

    def delete_expunge():
        m = blogin(user, pw)
        try:
            m.select("INBOX")
            u = uids_by_subject(m, subj["three"])
            m.uid("STORE", u[0], "+FLAGS", "(\\Deleted)")
            typ, data = m.expunge()
            left = uids_by_subject(m, subj["three"])
            return typ == "OK" and not left and data and data[0] is not None, "expunge %s %s, left %s" % (typ, data, left)
        finally:
            m.logout()

    def idle():
        m = blogin(user, pw)
        try:
            typ, data = m.select("INBOX")
            if "IDLE" not in m.capabilities:
                return False, "no IDLE capability: %s" % (m.capabilities,)
            m.sock.settimeout(WAIT)
            tagname = m._new_tag()
            m.send(tagname + b" IDLE\r\n")
            line = m.readline()
            if not line.startswith(b"+"):
                return False, "IDLE answered %r" % line
            seed(box, "py-idle-" + t)
            woke = None
            deadline = time.time() + WAIT
            while time.time() < deadline:
                line = m.readline()
                if not line:
                    break
                if line.startswith(b"* ") and b"EXISTS" in line:
                    woke = line
                    break
            m.send(b"DONE\r\n")
            while True:
                line = m.readline()
                if not line or line.startswith(tagname):
                    break
            return woke is not None and line.startswith(tagname + b" OK"), "woke=%r end=%r" % (woke, line)
        finally:
            m.logout()

    def wrong_password():
        m = bimap()
        try:
            try:
                m.login(user, "wrong-" + pw)
                return False, "wrong password accepted"
            except imaplib.IMAP4.error as e:
                refused = str(e)
        finally:
            m.shutdown()
        m = blogin(user, pw)  # the bridge is fine afterwards
        m.logout()
        return True, refused

    def smtp_send(frm, subject, expect_ok=True):
        s = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=30)
        try:
            s.ehlo()
            s.login(user, pw)
            try:
                s.sendmail(frm, [box], build_message(frm, box, subject))
                return True, ""
            except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as e:
                return False, e
        finally:
            try:
                s.quit()
            except Exception:
                pass

    def send_read_back():
        ok, why = smtp_send(box, "py-sent-" + t)
        if not ok:
            return False, why
        wait_subject(user, pw, "py-sent-" + t)
        return True, ""

    def send_alias():
        ok, why = smtp_send("support@" + DOMAIN, "py-alias-" + t)
        if not ok:
            return False, why
        raw = wait_subject(user, pw, "py-alias-" + t)
        return b"support@" in raw, "From not kept"

    def spoof(addr):
        def fn():
            ok, why = smtp_send(addr, "py-spoof-" + t)
            if ok:
                return False, "spoofed sender %s accepted" % addr
            if isinstance(why, smtplib.SMTPRecipientsRefused):
                # The bridge sends MAIL upstream with the first RCPT
                # (PIPELINING): Postfix's refusal of the sender comes back,
                # verbatim, as the reply to RCPT.
                codes = [c for c, _ in why.recipients.values()]
                texts = b" ".join(m for _, m in why.recipients.values())
                ok = bool(codes) and all(500 <= c < 600 for c in codes) and b"Sender address rejected" in texts
                return ok, "refused at RCPT with %r" % (why,)
            code = getattr(why, "smtp_code", 0)
            return 500 <= code < 600, "refused with %r" % (why,)

        return fn

    def smtp_wrong_password():
        s = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=30)
        try:
            s.ehlo()
            try:
                s.login(user, "wrong")
                return False, "wrong password accepted"
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code == 535, "answer %s %s" % (e.smtp_code, e.smtp_error)
        finally:
            s.close()

    def pop3_download_delete():
        pu, ppw, pbox = "pop", ENV["PW_pop"], "pop@" + DOMAIN
        subs = ["pop-%d-%s" % (i, t) for i in range(3)]
        for s_ in subs:
            seed(pbox, s_)
        p = poplib.POP3(HOST, int(ENV["B_POP3"]), timeout=30)
        try:
            p.user(pu)
            p.pass_(ppw)
            n, size = p.stat()
            got = []
            for i in range(1, n + 1):
                resp, lines, octets = p.retr(i)
                got.append(b"\r\n".join(lines))
            blob = b"\n".join(got)
            missing = [s_ for s_ in subs if s_.encode() not in blob]
            if missing or n < 3:
                return False, "stat %d, missing %s" % (n, missing)
            uidl = p.uidl()
            p.dele(1)
            p.quit()
        except Exception:
            p.close()
            raise
        p = poplib.POP3(HOST, int(ENV["B_POP3"]), timeout=30)
        try:
            p.user(pu)
            p.pass_(ppw)
            n2, _ = p.stat()
            return n2 == n - 1, "stat %d after deleting one of %d" % (n2, n)
        finally:
            p.quit()

    def pop3_wrong_password():
        p = poplib.POP3(HOST, int(ENV["B_POP3"]), timeout=30)
        try:
            p.user("pop")
            try:
                p.pass_("wrong")
                return False, "wrong password accepted"
            except poplib.error_proto as e:
                return str(e).startswith("b'-ERR"), str(e)
        finally:
            p.close()

    def concurrent():
        import threading

        errs, n = [], 8

        def one(i):
            try:
                m = blogin(user, pw)
                m.select("INBOX", readonly=True)
                typ, data = m.fetch("1:*", "(FLAGS)")
                if typ != "OK":
                    errs.append("%d: FETCH %s" % (i, typ))
                m.logout()
            except Exception as e:
                errs.append("%d: %s: %s" % (i, type(e).__name__, e))

        th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for x in th:
            x.start()
        for x in th:
            x.join(60)
        return not errs, "; ".join(errs)

    def large():
        big = os.urandom(4 * 1024 * 1024)
        subject = "py-large-" + t
        s = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=60)
        try:
            s.ehlo()
            s.login(user, pw)
            s.sendmail(box, [box], build_message(box, box, subject, attach=big))
        finally:
            s.quit()
        raw = wait_subject(user, pw, subject, timeout=30)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        got = [p_.get_content() for p_ in msg.iter_attachments()]
        return got and got[0] == big, "4 MiB attachment differs after the round trip"

    def append_sent():
        subject = "py-append-" + t
        m = blogin(user, pw)
        try:
            raw = build_message(box, "someone@example.net", subject, attach=os.urandom(10000))
            typ, data = m.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(time.time()), raw)
            if typ != "OK":
                return False, "APPEND %s %s" % (typ, data)
            m.select("Sent", readonly=True)
            u = uids_by_subject(m, subject)
            typ, data = m.uid("FETCH", u[0], "(BODY.PEEK[])")
            # imaplib turns bare LF into CRLF on the way out; compare lines.
            same = data[0][1].replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
            return same, "stored message differs from the APPENDed one"
        finally:
            m.logout()

    def partial_recipients():
        subject = "py-partial-" + t
        s = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=30)
        try:
            s.ehlo()
            s.login(user, pw)
            refused = s.sendmail(box, [box, "nobody@" + DOMAIN], build_message(box, box, subject))
        finally:
            s.quit()
        bad = refused.get("nobody@" + DOMAIN)
        if not bad or not 500 <= bad[0] < 600:
            return False, "refused recipients %r" % refused
        wait_subject(user, pw, subject)
        return True, ""

    def uidl_stable():
        pu, ppw = "pop", ENV["PW_pop"]
        seed("pop@" + DOMAIN, "pop-uidl-" + t)
        lists = []
        for _ in range(2):
            p = poplib.POP3(HOST, int(ENV["B_POP3"]), timeout=30)
            try:
                p.user(pu)
                p.pass_(ppw)
                lists.append(p.uidl()[1])
                top = p.top(1, 0)
            finally:
                p.quit()
        return lists[0] == lists[1] and lists[0] and any(l.startswith(b"Subject:") for l in top[1]), "UIDL %r then %r" % tuple(lists)

    sc = lambda n: scenario("python-imaplib", n)
    sc("read-inbox")(read_inbox)
    sc("fetch-attachment")(fetch_attachment)
    sc("mark-seen")(mark_seen)
    sc("move")(move)
    sc("delete-expunge")(delete_expunge)
    sc("idle-wakeup")(idle)
    sc("wrong-password")(wrong_password)
    scenario("python-smtplib", "send-read-back")(send_read_back)
    scenario("python-smtplib", "send-as-alias")(send_alias)
    scenario("python-smtplib", "spoof-refused-by-bridge")(spoof("alice@" + DOMAIN))
    scenario("python-smtplib", "spoof-refused-by-upstream")(spoof("ceo@" + DOMAIN))
    scenario("python-smtplib", "wrong-password")(smtp_wrong_password)
    scenario("python-smtplib", "send-4mib-read-back")(large)
    sc("concurrent-8-sessions")(concurrent)
    sc("append-to-sent")(append_sent)
    scenario("python-smtplib", "partial-recipient-refused")(partial_recipients)
    scenario("python-poplib", "download-delete")(pop3_download_delete)
    scenario("python-poplib", "uidl-stable-top")(uidl_stable)
    scenario("python-poplib", "wrong-password")(pop3_wrong_password)


def graph_seed(subject, user="gr", attach_file=None):
    """Send one message to gr@DOMAIN through the bridge's SMTP; the account
    sends through Graph, and the fake delivers it into the mailbox's Inbox."""
    pw = ENV["PW_" + user]
    box = "%s@%s" % (user, DOMAIN)
    s = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=30)
    try:
        s.ehlo()
        s.login(user, pw)
        attach = open(attach_file, "rb").read() if attach_file else None
        s.sendmail(box, [box], build_message(box, box, subject, attach))
    finally:
        s.quit()


def graph_scenarios():
    """The read_via = "graph" account: imaplib through the bridge, which
    serves IMAP itself from the fake Microsoft 365's Graph endpoint."""
    user, pw = "gr", ENV["PW_gr"]
    t = tag()
    subj = {k: "gr-%s-%s" % (k, t) for k in ("one", "two", "three")}

    def seeded():
        for k in ("one", "two", "three"):
            graph_seed(subj[k])
        for k in ("one", "two", "three"):
            wait_subject(user, pw, subj[k])
        return True, ""

    def read_inbox():
        m = blogin(user, pw)
        try:
            if "MOVE" not in m.capabilities or "IDLE" not in m.capabilities:
                return False, "capabilities after login: %s" % (m.capabilities,)
            typ, data = m.select("INBOX")
            typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            got = b" ".join(x[1] for x in data if isinstance(x, tuple)).decode()
            missing = [s for s in subj.values() if s not in got]
            return not missing, "missing %s" % missing
        finally:
            m.logout()

    def body_and_size():
        m = blogin(user, pw)
        try:
            m.select("INBOX", readonly=True)
            u = uids_by_subject(m, subj["one"])
            typ, data = m.uid("FETCH", u[0], "(RFC822.SIZE)")
            size = int(data[0].decode().split("RFC822.SIZE ")[1].split(")")[0].split()[0])
            typ, data = m.uid("FETCH", u[0], "(BODY.PEEK[])")
            body = data[0][1]
            msg = email.message_from_bytes(body, policy=email.policy.default)
            return size == len(body) and msg["Subject"] == subj["one"], "RFC822.SIZE %d, BODY[] %d bytes, subject %r" % (size, len(body), msg["Subject"])
        finally:
            m.logout()

    def uids_stable():
        got = []
        for _ in range(2):
            m = blogin(user, pw)
            try:
                typ, data = m.select("INBOX", readonly=True)
                typ, v = m.response("UIDVALIDITY")
                got.append((v, uids_by_subject(m, subj["two"])))
            finally:
                m.logout()
        return got[0] == got[1] and got[0][1], "sessions saw %s" % got

    def mark_seen():
        m = blogin(user, pw)
        try:
            m.select("INBOX")
            u = uids_by_subject(m, subj["one"])
            m.uid("STORE", u[0], "+FLAGS", "(\\Seen)")
        finally:
            m.logout()
        m = blogin(user, pw)
        try:
            m.select("INBOX", readonly=True)
            typ, data = m.uid("FETCH", u[0], "(FLAGS)")
            typ, unseen = m.uid("SEARCH", None, "UNSEEN")
            return b"\\Seen" in data[0] and u[0] not in unseen[0].split(), "flags %s, unseen %s" % (data, unseen)
        finally:
            m.logout()

    def move():
        m = blogin(user, pw)
        try:
            m.select("INBOX")
            u = uids_by_subject(m, subj["two"])
            typ, data = m.uid("MOVE", u[0], '"Junk Email"')
            if typ != "OK":
                return False, "MOVE: %s %s" % (typ, data)
            left = uids_by_subject(m, subj["two"])
            m.select('"Junk Email"', readonly=True)
            there = uids_by_subject(m, subj["two"])
            return not left and len(there) == 1, "inbox still has %s, Junk Email has %s" % (left, there)
        finally:
            m.logout()

    def delete_expunge():
        m = blogin(user, pw)
        try:
            m.select("INBOX")
            u = uids_by_subject(m, subj["three"])
            m.uid("STORE", u[0], "+FLAGS", "(\\Deleted)")
            typ, data = m.expunge()
            left = uids_by_subject(m, subj["three"])
            m.select('"Deleted Items"', readonly=True)
            trash = uids_by_subject(m, subj["three"])
            return typ == "OK" and not left and len(trash) == 1, "expunge %s %s, left %s, in Deleted Items %s" % (typ, data, left, trash)
        finally:
            m.logout()

    def unsupported():
        m = blogin(user, pw)
        try:
            typ, data = m.create("NewFolder")
            refused = "%s %s" % (typ, data)
            m.noop()
            return typ == "NO" and "CANNOT" in refused, refused
        finally:
            m.logout()

    for name, fn in (("seed-through-graph", seeded), ("read-inbox", read_inbox), ("body-and-size", body_and_size),
                     ("uids-stable", uids_stable), ("mark-seen", mark_seen), ("move", move),
                     ("delete-expunge", delete_expunge), ("create-refused", unsupported)):
        if not scenario("python-graph", name)(fn) and name == "seed-through-graph":
            return


def imap_login(user, pw):
    """One login; prints OK or the refusal text. Exit 0 on OK, 1 on NO, 2 on anything else."""
    m = bimap()
    try:
        m.login(user, pw)
        m.select("INBOX")
        print("OK")
        m.logout()
        return 0
    except imaplib.IMAP4.error as e:
        msg = e.args[0] if e.args else ""
        print("NO " + (msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)))
        return 1
    except Exception as e:
        print("ERROR %s: %s" % (type(e).__name__, e))
        return 2


def pop3_login(user, pw):
    """One POP3 login; prints OK or the refusal. Exit 0 on OK, 1 on -ERR, 2 otherwise."""
    p = poplib.POP3(HOST, int(ENV["B_POP3"]), timeout=30)
    try:
        p.user(user)
        p.pass_(pw)
        p.stat()
        print("OK")
        p.quit()
        return 0
    except poplib.error_proto as e:
        print("ERR " + (e.args[0].decode(errors="replace") if isinstance(e.args[0], bytes) else str(e)))
        return 1
    except Exception as e:
        print("ERROR %s: %s" % (type(e).__name__, e))
        return 2


def hold(user, pw):
    """Log in, wait for a line on stdin (the upstream is restarted meanwhile),
    then NOOP. Prints how the old session ended and whether a new one works."""
    m = blogin(user, pw)
    m.select("INBOX")
    print("READY", flush=True)
    sys.stdin.readline()
    m.sock.settimeout(20)
    t0 = time.time()
    try:
        typ, data = m.noop()
        old = "noop %s %s" % (typ, data)
        typ, data = m.select("INBOX")
        old += "; select %s %s" % (typ, data)
    except Exception as e:
        old = "%s: %s" % (type(e).__name__, e)
    took = time.time() - t0
    try:
        m2 = blogin(user, pw)
        typ, data = m2.select("INBOX")
        m2.logout()
        new = "new session %s" % typ
    except Exception as e:
        new = "new session failed: %s: %s" % (type(e).__name__, e)
    print("OLD %s (%.1fs)" % (old, took))
    print("NEW %s" % new, flush=True)


def hold_smtp(user, pw):
    """SMTP: log in and send one message (so the bridge holds an upstream
    connection), wait for a line on stdin (Postfix is restarted meanwhile),
    then send another in the same session. Prints how that went and whether
    a new session works. "sent SUBJECT" means the bridge recovered by itself."""
    box = "swaks@" + DOMAIN
    s = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=30)
    s.ehlo()
    s.login(user, pw)
    s.sendmail(box, [box], build_message(box, box, "hold-smtp-first-" + tag()))
    print("READY", flush=True)
    sys.stdin.readline()
    t0 = time.time()
    try:
        subject = "hold-smtp-" + tag()
        s.sendmail(box, [box], build_message(box, box, subject))
        old = "sent " + subject
    except smtplib.SMTPResponseException as e:
        old = "refused %s %s" % (e.smtp_code, e.smtp_error)
    except Exception as e:
        old = "%s: %s" % (type(e).__name__, e)
    took = time.time() - t0
    try:
        s.close()
    except Exception:
        pass
    try:
        s2 = smtplib.SMTP(HOST, int(ENV["B_SMTP"]), timeout=30)
        s2.ehlo()
        s2.login(user, pw)
        s2.sendmail(box, [box], build_message(box, box, "hold-smtp-new-" + tag()))
        s2.quit()
        new = "new session OK"
    except Exception as e:
        new = "new session failed: %s: %s" % (type(e).__name__, e)
    print("OLD %s (%.1fs)" % (old, took))
    print("NEW %s" % new, flush=True)


# ---- POP3 served from Microsoft Graph (read_via = "graph") ----


def idp_get(path, **q):
    with urllib.request.urlopen(ENV["IDP_URL"] + path + "?" + urllib.parse.urlencode(q), timeout=10) as r:
        return json.load(r)


def graph_pop_scenarios():
    box = "graphpop@" + DOMAIN
    pw = ENV["PW_gpop"]
    t = tag()
    msgs = [
        ("From: a@example.com\r\nTo: %s\r\nSubject: gp-%s-1\r\nMessage-ID: <gp1-%s@example.com>\r\n\r\n"
         "first\r\n.a line with a leading dot\r\n" % (box, t, t)).encode(),
        ("From: b@example.com\r\nTo: %s\r\nSubject: gp-%s-2\r\n\r\n" % (box, t)).encode() + (b"x" * 74 + b"\r\n") * 1000,
    ]
    for m in msgs:
        idp("/test/deliver", mailbox=box, message=m.decode())

    def login():
        p = poplib.POP3(HOST, int(ENV["B_POP3"]), timeout=60)
        p.user("gpop")
        p.pass_(pw)
        return p

    state = {}

    def fetch_all():
        p = login()
        count, total = p.stat()
        _, listing, _ = p.list()
        sizes = [int(l.split()[1]) for l in listing]
        _, uidl, _ = p.uidl()
        got = []
        for i in range(1, count + 1):
            _, lines, octets = p.retr(i)
            got.append(b"\r\n".join(lines) + b"\r\n")
        p.quit()
        state["uidl"] = [l.split()[1] for l in uidl]
        if count != 2 or sorted(got) != sorted(msgs):
            return False, "stat %d, retrieved %r" % (count, [g[:60] for g in got])
        if sizes != [len(g) for g in got] or total != sum(sizes):
            return False, "LIST sizes %r, RETR octets %r, STAT %d" % (sizes, [len(g) for g in got], total)
        if any(len(u) > 70 for u in state["uidl"]):
            return False, "UIDL longer than 70: %r" % state["uidl"]
        return True, ""

    def uidl_stable():
        p = login()
        _, uidl, _ = p.uidl()
        _, top, _ = p.top(1, 0)
        p.quit()
        again = [l.split()[1] for l in uidl]
        if again != state.get("uidl"):
            return False, "UIDL %r, earlier %r" % (again, state.get("uidl"))
        if not any(l.startswith(b"Subject: gp-") for l in top):
            return False, "TOP 1 0 = %r" % top[:5]
        return True, ""

    def rset_then_delete():
        p = login()
        p.dele(1)
        p.rset()
        p.quit()
        if idp_get("/test/folder", mailbox=box, folder="INBOX")["count"] != 2:
            return False, "RSET did not undo DELE"
        p = login()
        p.dele(1)
        p.quit()
        inbox = idp_get("/test/folder", mailbox=box, folder="INBOX")["count"]
        deleted = idp_get("/test/folder", mailbox=box, folder="Deleted Items")["count"]
        if inbox != 1 or deleted != 1:
            return False, "after DELE 1 + QUIT: INBOX %d, Deleted Items %d" % (inbox, deleted)
        return True, ""

    def throttled_retr():
        # Graph throttles the next message download once (Retry-After 1):
        # the bridge waits and RETR succeeds.
        idp("/test/graph-fault", status="429", count="1", retry_after="1", route="getMIME")
        p = login()
        _, lines, _ = p.retr(1)
        p.quit()
        if not lines:
            return False, "empty RETR"
        # Throttled for an hour: -ERR [SYS/TEMP], the session goes on.
        idp("/test/graph-fault", status="429", retry_after="3600", route="getMIME")
        p = login()
        try:
            p.retr(1)
            return False, "RETR succeeded while Graph throttles"
        except poplib.error_proto as e:
            if not str(e).startswith("b'-ERR [SYS/TEMP]"):
                return False, "RETR while throttled: %s" % e
        finally:
            idp("/test/graph-fault", status="")
        p.noop()
        p.quit()
        return True, ""

    scenario("python-poplib-graph", "stat-list-retr-byte-exact")(fetch_all)
    scenario("python-poplib-graph", "uidl-stable-top")(uidl_stable)
    scenario("python-poplib-graph", "rset-dele-moves-to-deleted-items")(rset_then_delete)
    scenario("python-poplib-graph", "throttled-retr")(throttled_retr)


def main(argv):
    cmd = argv[1]
    if cmd == "seed":
        attach = argv[5] if len(argv) > 5 and argv[4] == "--attach" else None
        seed(argv[2], argv[3], attach)
    elif cmd == "upstream":
        upstream()
    elif cmd == "python":
        python_scenarios()
    elif cmd == "graph":
        graph_scenarios()
    elif cmd == "graph-seed":
        graph_seed(argv[2], *argv[3:5])
    elif cmd == "graph-pop":
        graph_pop_scenarios()
    elif cmd == "find":
        folder = argv[5] if len(argv) > 5 else "INBOX"
        sys.stdout.buffer.write(wait_subject(argv[2], argv[3], argv[4], folder))
    elif cmd == "imap-login":
        return imap_login(argv[2], argv[3])
    elif cmd == "pop3-login":
        return pop3_login(argv[2], argv[3])
    elif cmd == "hold":
        hold(argv[2], argv[3])
    elif cmd == "hold-smtp":
        hold_smtp(argv[2], argv[3])
    else:
        print("clients.py: unknown command " + cmd, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
