#!/bin/sh
# Install the dk client from this dkserver. Usage:
#   curl -fsSL {base}/install.sh | sh
# Environment: DK_INSTALL_DIR (default ~/.local/bin), DK_INSECURE=1 to accept
# a self-signed development certificate.
set -eu
BASE="{base}"
DEST="${DK_INSTALL_DIR:-$HOME/.local/bin}"

fail() { echo "dk install: $*" >&2; exit 1; }

PYTHON=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON=$(command -v "$candidate"); break
  fi
done
[ -n "$PYTHON" ] || fail "Python 3.11 or newer is required (install python3 first)"

case "$(uname -s)" in
  Darwin) PLATFORM=darwin ;;
  *) PLATFORM=linux ;;
esac

INSECURE=""
[ "${DK_INSECURE:-0}" = "1" ] && INSECURE=1

mkdir -p "$DEST"
TMP="$DEST/.dk.download.$$"
trap 'rm -f "$TMP" "$TMP.x"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -fsSL ${INSECURE:+-k} -o "$TMP" "$BASE/download/$PLATFORM" || fail "download failed"
elif command -v wget >/dev/null 2>&1; then
  wget -q ${INSECURE:+--no-check-certificate} -O "$TMP" "$BASE/download/$PLATFORM" || fail "download failed"
else
  fail "curl or wget is required"
fi

# Run with the Python found above, whatever python3 is first on PATH later.
# A zipapp tolerates any prefix before the archive, so the shebang line can be
# replaced; tail is binary-safe.
if [ "$(head -c 2 "$TMP")" = "#!" ]; then
  { echo "#!$PYTHON"; tail -n +2 "$TMP"; } > "$TMP.x"
else
  { echo "#!$PYTHON"; cat "$TMP"; } > "$TMP.x"
fi
mv "$TMP.x" "$DEST/dk"
chmod 755 "$DEST/dk"

if ! "$PYTHON" -c 'import nacl, cryptography' 2>/dev/null; then
  echo "dk install: installing pynacl and cryptography for $PYTHON"
  "$PYTHON" -m pip install --user --quiet pynacl cryptography ||
    fail "could not install pynacl and cryptography; run: $PYTHON -m pip install --user pynacl cryptography"
fi

echo "dk installed to $DEST/dk"
case ":$PATH:" in
  *":$DEST:"*) ;;
  *) echo "Add it to your PATH:  export PATH=\"$DEST:\$PATH\"" ;;
esac
echo "Next: dk --server $BASE init YOUR_ID"
