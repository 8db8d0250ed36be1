<?php
// PHP imap extension (c-client) against the bridge: part of test/peers/run.sh.
// Usage: php clients.php   (environment: B_IMAP, B_POP3, PW_php, T, DOMAIN, SUBJ_PREFIX, ATTACH_FILE)
// Prints "PASS php-imap scenario" / "FAIL php-imap scenario: why".

error_reporting(E_ALL & ~E_WARNING & ~E_NOTICE & ~E_DEPRECATED);
imap_timeout(IMAP_OPENTIMEOUT, 20);
imap_timeout(IMAP_READTIMEOUT, 20);

// PHP_USER, PHP_GRAPH and PHP_ARCHIVE run the same scenarios against an
// account served from Microsoft Graph (scenarios.sh php_graph_scenarios).
$user = getenv('PHP_USER') ?: 'php';
$pw = getenv('PW_' . $user);
$archive = getenv('PHP_ARCHIVE') ?: 'Archive';
$client = getenv('PHP_GRAPH') ? 'php-imap-graph' : 'php-imap';
$p = getenv('SUBJ_PREFIX');
$mbox = '{127.0.0.1:' . getenv('B_IMAP') . '/imap/notls/norsh}';
$attach = file_get_contents(getenv('ATTACH_FILE'));

function result($ok, $scenario, $why = '') {
    global $client;
    echo ($ok ? 'PASS' : 'FAIL') . " $client $scenario" . ($ok || $why === '' ? '' : ': ' . preg_replace('/\s+/', ' ', $why)) . "\n";
    flush();
}

function errors() {
    $e = imap_errors();
    return $e ? implode(' | ', $e) : (imap_last_error() ?: '');
}

function open_box($folder = 'INBOX', $flags = 0) {
    global $mbox, $user, $pw;
    $c = imap_open($mbox . $folder, $user, $pw, $flags, 1);
    if ($c === false) {
        throw new Exception('imap_open: ' . errors());
    }
    return $c;
}

function find_msgno($c, $subject) {
    $r = imap_search($c, 'SUBJECT "' . $subject . '"');
    return $r ? $r[0] : 0;
}

function run($scenario, $fn) {
    try {
        [$ok, $why] = $fn();
    } catch (Throwable $e) {
        [$ok, $why] = [false, get_class($e) . ': ' . $e->getMessage()];
    }
    result($ok, $scenario, $why);
}

run('read-inbox', function () use ($p) {
    $c = open_box();
    $n = imap_num_msg($c);
    $subjects = [];
    foreach (imap_fetch_overview($c, "1:$n") as $o) {
        $subjects[] = $o->subject ?? '';
    }
    imap_close($c);
    $want = ["$p-one", "$p-two", "$p-three", "$p-attach"];
    $missing = array_diff($want, $subjects);
    return [!$missing && $n >= 4, 'missing ' . implode(',', $missing) . " of $n"];
});

run('fetch-attachment', function () use ($p, $attach) {
    $c = open_box();
    $no = find_msgno($c, "$p-attach");
    if (!$no) {
        return [false, 'message not found'];
    }
    $s = imap_fetchstructure($c, $no);
    $got = null;
    foreach ($s->parts ?? [] as $i => $part) {
        if (($part->ifdisposition && strtolower($part->disposition) === 'attachment')) {
            $body = imap_fetchbody($c, $no, (string)($i + 1), FT_PEEK);
            $got = $part->encoding == ENCBASE64 ? base64_decode($body) : $body;
        }
    }
    imap_close($c);
    if ($got === null) {
        return [false, 'no attachment part'];
    }
    return [hash('sha256', $got) === hash('sha256', $attach), 'attachment differs: ' . strlen($got) . ' vs ' . strlen($attach)];
});

run('mark-seen', function () use ($p) {
    $c = open_box();
    $no = find_msgno($c, "$p-one");
    imap_setflag_full($c, (string)$no, '\\Seen');
    imap_close($c);
    $c = open_box('INBOX', OP_READONLY);
    $no = find_msgno($c, "$p-one");
    $o = imap_fetch_overview($c, (string)$no);
    imap_close($c);
    return [$o && $o[0]->seen, 'not seen after reconnect'];
});

run('move', function () use ($p, $archive) {
    $c = open_box();
    $no = find_msgno($c, "$p-two");
    if (!$no) {
        return [false, 'message not found'];
    }
    if (!imap_mail_move($c, (string)$no, $archive)) {
        return [false, 'imap_mail_move: ' . errors()];
    }
    imap_expunge($c);
    $left = find_msgno($c, "$p-two");
    imap_close($c);
    $c = open_box($archive, OP_READONLY);
    $there = find_msgno($c, "$p-two");
    imap_close($c);
    return [!$left && $there, "inbox $left, archive $there"];
});

run('delete-expunge', function () use ($p) {
    $c = open_box();
    $no = find_msgno($c, "$p-three");
    imap_delete($c, (string)$no);
    imap_expunge($c);
    $left = find_msgno($c, "$p-three");
    imap_close($c);
    return [$no && !$left, "msgno $no, left $left"];
});

run('wrong-password', function () use ($mbox, $user) {
    $c = imap_open($mbox . 'INBOX', $user, 'wrong', OP_SILENT, 0);
    $err = errors();
    if ($c !== false) {
        imap_close($c);
        return [false, 'wrong password accepted'];
    }
    $c = open_box(); // the bridge still serves this user
    imap_close($c);
    return [true, $err];
});

run('pop3-read', function () use ($p, $user, $pw) {
    $c = imap_open('{127.0.0.1:' . getenv('B_POP3') . '/pop3/notls}INBOX', $user, $pw, 0, 1);
    if ($c === false) {
        return [false, 'imap_open pop3: ' . errors()];
    }
    $n = imap_num_msg($c);
    $subjects = [];
    foreach (imap_fetch_overview($c, "1:$n") as $o) {
        $subjects[] = $o->subject ?? '';
    }
    imap_close($c);
    return [in_array("$p-attach", $subjects), "$n messages: " . implode(',', $subjects)];
});
