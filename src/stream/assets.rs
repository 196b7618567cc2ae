//! The live map's static files, embedded in the binary at build time (no
//! CDN, no build step): the page (`map/index.html`, `map/map.js`,
//! `map/map.css`), Leaflet and its images, the offline world outline and
//! the licences of what is vendored (`map/VENDORED.md` says where each file
//! comes from; `scripts/vendor-map.sh` reproduces them).
//!
//! URLs: the page is `/map` (and `/map/`); every other file is
//! `/map/<path>` with `<path>` as listed here (`leaflet.js`,
//! `images/layers.png`, ...). The page refers to its files by these
//! absolute paths. The files hold no fleet data: the page reads everything
//! from `/api/stream` and `/api/summary`.

/// Where a tile layer's URL template goes (`map_tiles_url`): replaced by
/// [`index_html`] with a `<meta name="fleetwire-tiles">` tag.
const TILES_PLACEHOLDER: &str = "<!-- fleetwire-tiles -->";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const PNG: &str = "image/png";
const GEOJSON: &str = "application/geo+json";
const TEXT: &str = "text/plain; charset=utf-8";

const INDEX: &str = include_str!("map/index.html");

/// Every served file: path under `/map/`, contents, content type.
const FILES: &[(&str, &[u8], &str)] = &[
    ("index.html", INDEX.as_bytes(), HTML),
    ("map.js", include_bytes!("map/map.js"), JS),
    ("map.css", include_bytes!("map/map.css"), CSS),
    ("leaflet.js", include_bytes!("map/leaflet.js"), JS),
    ("leaflet.css", include_bytes!("map/leaflet.css"), CSS),
    ("images/layers.png", include_bytes!("map/images/layers.png"), PNG),
    ("images/layers-2x.png", include_bytes!("map/images/layers-2x.png"), PNG),
    ("images/marker-icon.png", include_bytes!("map/images/marker-icon.png"), PNG),
    ("images/marker-icon-2x.png", include_bytes!("map/images/marker-icon-2x.png"), PNG),
    ("images/marker-shadow.png", include_bytes!("map/images/marker-shadow.png"), PNG),
    ("world-110m.geojson", include_bytes!("map/world-110m.geojson"), GEOJSON),
    ("LICENSE-leaflet.txt", include_bytes!("map/LICENSE-leaflet.txt"), TEXT),
    ("LICENSE-world-atlas.txt", include_bytes!("map/LICENSE-world-atlas.txt"), TEXT),
];

/// The contents and content type of the map's file at `path` (relative to
/// `/map/`; `""` is the page itself), or `None` for any other path.
pub(crate) fn asset(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = if path.is_empty() { "index.html" } else { path };
    FILES.iter().find(|(p, _, _)| *p == path).map(|&(_, bytes, ty)| (bytes, ty))
}

/// The page, with a tile layer when `tiles_url` (a Leaflet URL template
/// such as `https://tile.example.org/{z}/{x}/{y}.png`) is given; without
/// one the page shows the offline world outline alone.
pub(crate) fn index_html(tiles_url: Option<&str>) -> String {
    let meta = match tiles_url {
        Some(url) => format!("<meta name=\"fleetwire-tiles\" content=\"{}\">", escape_attr(url)),
        None => String::new(),
    };
    INDEX.replacen(TILES_PLACEHOLDER, &meta, 1)
}

/// Escapes text for a double-quoted HTML attribute.
fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str) -> &'static str {
        std::str::from_utf8(asset(path).expect(path).0).expect("utf-8")
    }

    /// Paths under `/map/` named in a file: absolute `/map/...` references
    /// (HTML attributes, JavaScript strings) and CSS `url(...)`s relative
    /// to `/map/` (the style sheets live there).
    fn references(body: &str) -> Vec<String> {
        let mut out = Vec::new();
        let end = |s: &str| {
            s.find(|c: char| matches!(c, '"' | '\'' | ')' | '?' | '#') || c.is_whitespace())
                .unwrap_or(s.len())
        };
        for (i, _) in body.match_indices("/map/") {
            let rest = &body[i + 5..];
            out.push(rest[..end(rest)].to_string());
        }
        for (i, _) in body.match_indices("url(") {
            let rest = body[i + 4..].trim_start_matches(['"', '\'']);
            let r = &rest[..end(rest)];
            if !r.is_empty() && !r.starts_with("data:") && !r.contains("//") {
                out.push(r.trim_start_matches("/map/").to_string());
            }
        }
        out
    }

    #[test]
    fn every_file_the_page_refers_to_is_served() {
        let mut seen = Vec::new();
        for file in ["index.html", "map.js", "map.css", "leaflet.css"] {
            for r in references(text(file)) {
                assert!(asset(&r).is_some(), "{file} refers to /map/{r}, which is not served");
                seen.push(r);
            }
        }
        // The scan sees the references at all.
        for must in [
            "leaflet.js",
            "leaflet.css",
            "map.js",
            "map.css",
            "world-110m.geojson",
            "images/layers.png",
        ] {
            assert!(seen.iter().any(|s| s == must), "no reference to {must} found: {seen:?}");
        }
    }

    #[test]
    fn content_types_follow_the_extension_and_unknown_paths_are_none() {
        for (path, bytes, ty) in FILES {
            let want = match path.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("png") => PNG,
                Some("geojson") => GEOJSON,
                Some("txt") => TEXT,
                other => panic!("{path}: no content type for {other:?}"),
            };
            assert_eq!(*ty, want, "{path}");
            assert!(!bytes.is_empty(), "{path} is empty");
            if *ty == PNG {
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{path} is not a PNG");
            }
        }
        assert_eq!(asset("").map(|a| a.0), asset("index.html").map(|a| a.0));
        for bad in ["nope.js", "../assets.rs", "/map.js", "images", "map.js/", "MAP.JS"] {
            assert!(asset(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_world_outline_is_geojson_with_the_countries() {
        let v: serde_json::Value =
            serde_json::from_slice(asset("world-110m.geojson").unwrap().0).unwrap();
        assert_eq!(v["type"], "FeatureCollection");
        let features = v["features"].as_array().unwrap();
        assert!(features.len() > 150, "{} features", features.len());
        let names: Vec<&str> =
            features.iter().filter_map(|f| f["properties"]["name"].as_str()).collect();
        for country in ["Germany", "Australia", "Brazil"] {
            assert!(names.contains(&country), "{country} missing");
        }
    }

    /// VENDORED.md lists every vendored file with its SHA-256: the files
    /// are what the script wrote (or the table was updated with them).
    #[test]
    fn vendored_files_match_their_hashes_in_vendored_md() {
        let doc = include_str!("map/VENDORED.md");
        let mut checked = 0;
        for line in doc.lines() {
            let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
            let [_, path, _, _, hash, _] = cells[..] else { continue };
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let (bytes, _) = asset(path).unwrap_or_else(|| panic!("{path} is not served"));
            let got = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
            assert_eq!(got, hash, "{path}: SHA-256 differs from VENDORED.md");
            checked += 1;
        }
        assert_eq!(checked, 10, "VENDORED.md should list the 10 vendored files");
    }

    #[test]
    fn the_tile_url_is_injected_escaped() {
        let plain = index_html(None);
        assert!(!plain.contains("fleetwire-tiles\""), "{plain}");
        assert!(!plain.contains(TILES_PLACEHOLDER));
        let page = index_html(Some("https://t.example/{z}/{x}/{y}.png?a=1&b=\"><script>"));
        let want = concat!(
            "<meta name=\"fleetwire-tiles\" ",
            "content=\"https://t.example/{z}/{x}/{y}.png?a=1&amp;b=&quot;&gt;&lt;script&gt;\">"
        );
        assert!(page.contains(want), "{page}");
        assert!(page.find(want) < page.find("<script"), "the meta tag is in the head");
        assert_eq!(page.matches("<script").count(), 2, "only the page's own scripts");
    }
}
