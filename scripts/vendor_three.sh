#!/usr/bin/env bash
# Refresh the three.js build the search page ships (scenegrep/static/vendor/three/).
#
#   scripts/vendor_three.sh [VERSION]      (default: the version pinned below)
#
# The page has no build step and loads nothing from a CDN: it imports these files by an import map in
# scenegrep/static/index.html ("three" -> three.module.min.js). This script takes them from three's own npm
# package (`npm pack`, the registry's tarball, checked by npm against its recorded integrity hash):
#   build/three.module.min.js, build/three.core.min.js  the minified ES-module build (two files since r171)
#   examples/jsm/controls/OrbitControls.js              the orbit controls (imports "three")
#   LICENSE                                             three.js's MIT licence, shipped beside them
# and writes VERSION with the version and the tarball's integrity. Run it from anywhere; it needs npm.
# After a bump, run tests/test_page_browser.py (the page in Chromium) before committing.
set -euo pipefail

VERSION="${1:-0.180.0}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$REPO/scenegrep/static/vendor/three"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack "three@$VERSION" --silent >/dev/null
tar xzf "three-$VERSION.tgz"
integrity="$(npm view "three@$VERSION" dist.integrity)"

for f in build/three.module.min.js build/three.core.min.js examples/jsm/controls/OrbitControls.js LICENSE; do
    test -f "package/$f" || { echo "three@$VERSION has no $f: the page's import map needs updating" >&2; exit 1; }
done

rm -rf "$DEST"
mkdir -p "$DEST"
cp package/build/three.module.min.js package/build/three.core.min.js \
   package/examples/jsm/controls/OrbitControls.js package/LICENSE "$DEST/"
printf 'three %s\nintegrity %s\n' "$VERSION" "$integrity" > "$DEST/VERSION"
echo "vendored three@$VERSION into $DEST"
