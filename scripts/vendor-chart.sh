#!/usr/bin/env bash
# Vendor the chart page's chart library from the npm registry into api/static/vendor/:
# the UMD build of chart.js (pinned in api/static/package.json, locked in
# api/static/package-lock.json) and its license. The copies are committed and shipped in
# the Python package ([tool.setuptools.package-data]), so the page needs no CDN.
#
#   scripts/vendor-chart.sh           # install the locked version and copy it
#   scripts/vendor-chart.sh --update  # re-resolve package.json, refresh the lock file too
set -euo pipefail
cd "$(dirname "$0")/.."
static=api/static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$static/package.json" "$work/"
if [ "${1:-}" != "--update" ] && [ -f "$static/package-lock.json" ]; then
  cp "$static/package-lock.json" "$work/"
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --silent)
else
  (cd "$work" && npm install --ignore-scripts --no-audit --no-fund --silent)
  cp "$work/package-lock.json" "$static/package-lock.json"
fi

pkg="$work/node_modules/chart.js"
version=$(node -p "require('$pkg/package.json').version")
mkdir -p "$static/vendor"
cp "$pkg/dist/chart.umd.min.js" "$static/vendor/chart.umd.min.js" 2>/dev/null \
  || cp "$pkg/dist/chart.umd.js" "$static/vendor/chart.umd.min.js"
cp "$pkg/LICENSE.md" "$static/vendor/chart.js.LICENSE.md"
# The UMD build bundles its one dependency, @kurkle/color (MIT): its license goes along.
color="$work/node_modules/@kurkle/color"
cp "$color/LICENSE.md" "$static/vendor/kurkle-color.LICENSE.md"
echo "chart.js $version (bundles @kurkle/color $(node -p "require('$color/package.json').version"))" > "$static/vendor/VERSION"
echo "vendored chart.js $version into $static/vendor/"
