#!/bin/sh
# version.sh: the version stamped into the binary and the Debian package.
#   a tag v1.2.3 on HEAD         -> 1.2.3
#   4 commits after v1.2.3       -> 1.2.3+git4.gabc1234
#   no tag                       -> 0.0.0~git20261126.abc1234  (HEAD's commit date)
#   uncommitted changes          -> the above + ".dirty"
#   no .git (a source tarball)   -> 0.0.0~unknown, or $VERSION when set
# A Debian version must start with a digit and may not contain '-' without
# a Debian revision, so git describe's output is rewritten to fit.
set -eu
cd "$(dirname "$0")/.."
if [ -n "${VERSION:-}" ]; then
	echo "$VERSION"
	exit 0
fi
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	echo "0.0.0~unknown"
	exit 0
fi
dirty=
if ! git diff --quiet HEAD -- 2>/dev/null; then
	dirty=.dirty
fi
if d=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	d=${d#v}
	case $d in
	*-*-g*) base=${d%-*-g*}; rest=${d#"$base"-}; n=${rest%%-*}; sha=${rest#*-}; echo "$base+git$n.$sha$dirty" ;;
	*) echo "$d$dirty" ;;
	esac
	exit 0
fi
echo "0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d).$(git rev-parse --short=7 HEAD)$dirty"
