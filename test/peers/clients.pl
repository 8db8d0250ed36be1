#!/usr/bin/perl
# Perl Mail::IMAPClient and Net::SMTP against the bridge: part of test/peers/run.sh.
# Environment: B_IMAP, B_SMTP, PW_perl, DOMAIN, SUBJ_PREFIX, PEERS_DIR (for clients.py seed).
# Prints "PASS perl-... scenario" / "FAIL perl-... scenario: why".
use strict;
use warnings;
use Mail::IMAPClient;
use Net::SMTP;
use Time::HiRes qw(time sleep);

$| = 1;
# PERL_USER, PERL_GRAPH and PERL_ARCHIVE run the same scenarios against an
# account served from Microsoft Graph (scenarios.sh perl_graph_scenarios).
my $user = $ENV{PERL_USER} // 'perl';
my $pw   = $ENV{"PW_$user"};
my $p    = $ENV{SUBJ_PREFIX};
my $dom  = $ENV{DOMAIN};
my $box  = "$user\@$dom";
my $archive = $ENV{PERL_ARCHIVE} // 'Archive';
my $imapclient = $ENV{PERL_GRAPH} ? 'perl-imapclient-graph' : 'perl-imapclient';
my $netsmtp    = $ENV{PERL_GRAPH} ? 'perl-netsmtp-graph'    : 'perl-netsmtp';

sub result {
    my ($ok, $client, $scenario, $why) = @_;
    $why //= '';
    $why =~ s/\s+/ /g;
    print(($ok ? 'PASS' : 'FAIL') . " $client $scenario" . ($ok || $why eq '' ? '' : ": $why") . "\n");
}

sub run {
    my ($client, $scenario, $fn) = @_;
    my ($ok, $why) = eval { $fn->() };
    ($ok, $why) = (0, "died: $@") if $@;
    result($ok, $client, $scenario, $why);
}

sub imap {
    my $c = Mail::IMAPClient->new(
        Server => '127.0.0.1', Port => $ENV{B_IMAP}, User => $user, Password => $pw,
        Uid => 1, Timeout => 20, Ignoresizeerrors => 1,
    ) or die "login: $@\n";
    return $c;
}

sub find_uid {
    my ($c, $subject) = @_;
    my $r = $c->search(SUBJECT => $c->Quote($subject)) or return;
    return $r->[0];
}

run($imapclient, 'read-inbox', sub {
    my $c = imap();
    $c->select('INBOX') or die "select: " . $c->LastError . "\n";
    my $n = $c->message_count('INBOX');
    my $uids = $c->messages or die "messages: " . $c->LastError . "\n";
    my $subs = $c->parse_headers($uids, 'Subject');
    my %have = map { ($subs->{$_}{Subject}[0] // '') => 1 } keys %$subs;
    my @missing = grep { !$have{$_} } ("$p-one", "$p-two", "$p-three");
    $c->logout;
    return (!@missing && $n >= 3, "missing @missing of $n");
});

run($imapclient, 'mark-seen', sub {
    my $c = imap();
    $c->select('INBOX');
    my $u = find_uid($c, "$p-one") or return (0, 'message not found');
    $c->see($u) or return (0, 'see: ' . $c->LastError);
    $c->logout;
    $c = imap();
    $c->examine('INBOX');
    my $flags = $c->flags($u);
    $c->logout;
    return ((grep { $_ eq '\\Seen' } @$flags) ? 1 : 0, "flags @$flags");
});

run($imapclient, 'move', sub {
    my $c = imap();
    $c->select('INBOX');
    my $u = find_uid($c, "$p-two") or return (0, 'message not found');
    $c->move($archive, $u) or return (0, 'move: ' . $c->LastError);
    $c->expunge;
    my $left = find_uid($c, "$p-two");
    $c->select($archive);
    my $there = find_uid($c, "$p-two");
    $c->logout;
    return (!$left && $there, "inbox " . ($left // '-') . " archive " . ($there // '-'));
});

run($imapclient, 'delete-expunge', sub {
    my $c = imap();
    $c->select('INBOX');
    my $u = find_uid($c, "$p-three") or return (0, 'message not found');
    $c->delete_message($u) or return (0, 'delete: ' . $c->LastError);
    $c->expunge or return (0, 'expunge: ' . $c->LastError);
    my $left = find_uid($c, "$p-three");
    $c->logout;
    return (!$left, "still there: " . ($left // ''));
});

run($imapclient, 'idle-wakeup', sub {
    my $c = imap();
    $c->select('INBOX');
    my $tag = $c->idle or return (0, 'idle: ' . $c->LastError);
    my @seed = $ENV{PERL_GRAPH} ? ('graph-seed', "$p-idle", $user) : ('seed', $box, "$p-idle");
    system('python3', "$ENV{PEERS_DIR}/clients.py", @seed) == 0 or return (0, 'seed failed');
    my $deadline = time + 15;
    my $woke;
    while (time < $deadline && !$woke) {
        my $data = $c->idle_data(1) or last;
        $woke = grep { /EXISTS/ } @$data;
    }
    $c->done($tag);
    $c->logout;
    return ($woke ? 1 : 0, 'no EXISTS within 15 s');
});

run($imapclient, 'wrong-password', sub {
    my $c = Mail::IMAPClient->new(Server => '127.0.0.1', Port => $ENV{B_IMAP}, User => $user,
        Password => 'wrong', Timeout => 20);
    return (0, 'wrong password accepted') if $c && $c->IsAuthenticated;
    my $err = $@;
    imap()->logout;
    return (1, $err);
});

sub smtp_send {
    my ($from, $subject) = @_;
    my $s = Net::SMTP->new('127.0.0.1', Port => $ENV{B_SMTP}, Timeout => 20) or die "connect: $@\n";
    $s->auth($user, $pw) or die 'auth: ' . $s->code . ' ' . $s->message . "\n";
    my $ok = $s->mail($from) && $s->to($box)
        && $s->data("From: $from\r\nTo: $box\r\nSubject: $subject\r\n\r\nfrom Net::SMTP\r\n");
    my $answer = $s->code . ' ' . $s->message;
    $s->quit;
    return ($ok, $answer);
}

run($netsmtp, 'send-read-back', sub {
    my ($ok, $answer) = smtp_send($box, "$p-sent");
    return (0, $answer) unless $ok;
    my $deadline = time + 15;
    while (time < $deadline) {
        my $c = imap();
        $c->examine('INBOX');
        my $u = find_uid($c, "$p-sent");
        $c->logout;
        return (1, '') if $u;
        sleep 0.5;
    }
    return (0, 'sent message never arrived');
});

run($netsmtp, 'spoof-refused', sub {
    my ($ok, $answer) = smtp_send("bob\@$dom", "$p-spoof");
    return (!$ok && $answer =~ /^5/, "answer $answer");
});
