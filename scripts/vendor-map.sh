#!/usr/bin/env bash
# Vendors the third-party files of the live map (/map) into src/stream/map/:
# Leaflet's build and its images, and an offline world outline (Natural
# Earth 110 m countries from the world-atlas TopoJSON, converted to GeoJSON
# with topojson-client, coordinates rounded to 0.001 degree, below the
# data's own quantisation step). The results are committed; CI does not run
# this. Needs node and npm (the npm registry); writes nothing else.
# Prints the SHA-256 of every file it wrote (VENDORED.md lists them).
set -euo pipefail

LEAFLET=1.9.4
WORLD_ATLAS=2.0.2
TOPOJSON_CLIENT=3.1.0

out="$(cd "$(dirname "$0")/.." && pwd)/src/stream/map"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --save-exact \
  "leaflet@$LEAFLET" "world-atlas@$WORLD_ATLAS" "topojson-client@$TOPOJSON_CLIENT" >/dev/null

mkdir -p "$out/images"
cp node_modules/leaflet/dist/leaflet.js node_modules/leaflet/dist/leaflet.css "$out/"
cp node_modules/leaflet/dist/images/*.png "$out/images/"
cp node_modules/leaflet/LICENSE "$out/LICENSE-leaflet.txt"
cp node_modules/world-atlas/LICENSE "$out/LICENSE-world-atlas.txt"

cat > convert.js <<'JS'
// countries-110m TopoJSON -> GeoJSON FeatureCollection for a flat map:
// properties reduced to the country name, coordinates rounded to 3
// decimals. The TopoJSON is spherical: a ring that crosses the
// antimeridian jumps from +180 to -180. Twice (Fiji, eastern Russia): its
// western-hemisphere points move east by 360 degrees, so the ring is
// continuous past 180. Once (Antarctica): the ring goes round the pole, so
// it is closed along the antimeridian through the pole.
const fs = require("fs");
const topojson = require("topojson-client");
const topo = JSON.parse(fs.readFileSync("node_modules/world-atlas/countries-110m.json", "utf8"));
const round = (x) => (Array.isArray(x) ? x.map(round) : Math.round(x * 1000) / 1000);
function flatRing(r) {
  const jumps = [];
  for (let i = 1; i < r.length; i++) if (Math.abs(r[i][0] - r[i - 1][0]) > 180) jumps.push(i);
  if (jumps.length === 0) return r;
  if (jumps.length % 2 === 0) return r.map(([x, y]) => [x < 0 ? x + 360 : x, y]);
  if (jumps.length > 1) throw new Error("a ring crosses the antimeridian " + jumps.length + " times");
  const i = jumps[0], a = r[i - 1], b = r[i];
  const pole = a[1] < 0 ? -90 : 90;
  const side = a[0] < 0 ? -180 : 180;
  return [...r.slice(0, i), [side, a[1]], [side, pole], [-side, pole], [-side, b[1]], ...r.slice(i)];
}
function flat(g) {
  if (g.type === "Polygon") return { type: g.type, coordinates: g.coordinates.map(flatRing) };
  if (g.type === "MultiPolygon") return { type: g.type, coordinates: g.coordinates.map((p) => p.map(flatRing)) };
  throw new Error("unexpected geometry " + g.type);
}
const fc = topojson.feature(topo, topo.objects.countries);
const out = {
  type: "FeatureCollection",
  features: fc.features.map((f) => ({
    type: "Feature",
    properties: { name: (f.properties && f.properties.name) || "" },
    geometry: { type: f.geometry.type, coordinates: round(flat(f.geometry).coordinates) },
  })),
};
process.stdout.write(JSON.stringify(out) + "\n");
JS
node convert.js > "$out/world-110m.geojson"

cd "$out"
sha256sum leaflet.js leaflet.css images/*.png world-110m.geojson LICENSE-leaflet.txt LICENSE-world-atlas.txt
