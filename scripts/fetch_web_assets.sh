#!/usr/bin/env bash
# Fetch the Tailwind files that ColBench pages link, so the renderer can serve them offline.
#
#   scripts/fetch_web_assets.sh DEST        (setup calls it with $COLLAB_HOME/web)
#
# Writes into DEST:
#   tailwind-2.2.19.min.css   <- npm tailwindcss@2.2.19, dist/tailwind.min.css
#                                (pages link https://cdn.jsdelivr.net/npm/tailwindcss@2.2.19/dist/tailwind.min.css)
#   tailwindcss-3.4.10.js     <- npm tailwindcss-cdn@3.4.10, 3.4.10/tailwindcss.js
#                                (the Play CDN script served at https://cdn.tailwindcss.com)
#
# Idempotent: files already present (and non-empty) are left alone. Only the npm registry is
# used (`npm pack`), never a CDN. Exits non-zero with a message when npm or the registry is
# unavailable.
set -euo pipefail

V2_VERSION=2.2.19
V3_VERSION=3.4.10
V2_FILE="tailwind-${V2_VERSION}.min.css"
V3_FILE="tailwindcss-${V3_VERSION}.js"

die() {
    echo "fetch_web_assets: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: $0 DEST   (e.g. $0 \"\${COLLAB_HOME:-\$HOME/.collab-rl}/web\")"
DEST=$1
mkdir -p "$DEST" || die "cannot create $DEST"

if [ -s "$DEST/$V2_FILE" ] && [ -s "$DEST/$V3_FILE" ]; then
    echo "fetch_web_assets: Tailwind files already in $DEST"
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm is not installed. Install Node.js/npm (Debian: apt-get install npm) and rerun, or copy $V2_FILE and $V3_FILE into $DEST by hand. Pages still render without them, but unstyled."
command -v tar >/dev/null 2>&1 || die "tar is not installed (apt-get install tar)."

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# npm pack downloads the package tarball without installing anything.
fetch_member() {  # package@version  member-inside-tarball  output-name
    local spec=$1 member=$2 output=$3 tarball
    if [ -s "$DEST/$output" ]; then
        return 0
    fi
    if ! tarball=$(cd "$WORK" && npm pack --loglevel=error "$spec" 2>"$WORK/npm.log" | tail -n 1) || [ ! -s "$WORK/$tarball" ]; then
        echo "fetch_web_assets: 'npm pack $spec' failed (is the npm registry reachable?). npm said:" >&2
        sed 's/^/    /' "$WORK/npm.log" | tail -n 5 >&2
        die "could not fetch $spec. Rerun when the registry is reachable, or copy $output into $DEST by hand."
    fi
    tar -xzf "$WORK/$tarball" -C "$WORK" "package/$member" 2>/dev/null \
        || die "$spec has no package/$member (unexpected tarball layout)."
    # Write under a temporary name and rename, so an interrupted run never leaves half a file.
    cp "$WORK/package/$member" "$DEST/$output.part"
    mv "$DEST/$output.part" "$DEST/$output"
    rm -rf "$WORK/package" "${WORK:?}/$tarball"
    echo "fetch_web_assets: $DEST/$output ($(wc -c <"$DEST/$output") bytes)"
}

fetch_member "tailwindcss@$V2_VERSION" "dist/tailwind.min.css" "$V2_FILE"
fetch_member "tailwindcss-cdn@$V3_VERSION" "$V3_VERSION/tailwindcss.js" "$V3_FILE"
