//! Great-circle geometry on the WGS 84 mean sphere, with a cheap path for
//! the short hops between consecutive fixes.
//!
//! Consecutive fixes of one device are meters to a few hundred meters
//! apart. For those, the equirectangular projection at the pair's mean
//! latitude (one cosine and one square root) gives the haversine distance
//! to within [`FAST_ERROR_M`]; the full haversine formula (five
//! trigonometric calls) runs only for pairs farther apart than
//! [`FAST_WITHIN_RAD`] in latitude or longitude, where the approximation
//! would drift. The bound is three orders of magnitude below the
//! odometer's jitter dead band (`stationary_radius`, 10 m by default), so
//! it never changes whether a fix moves the odometer by more than
//! rounding; `fast_path_error_is_within_its_bound` checks it against
//! haversine.

/// Mean Earth radius in meters (IUGG).
pub(crate) const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The cheap path's reach: both the latitude and the longitude difference
/// below this many radians (0.001 rad: 6.4 km of latitude).
pub(crate) const FAST_WITHIN_RAD: f64 = 1e-3;

/// Largest difference between [`distance_m`] and [`haversine_m`] on the
/// cheap path, meters (measured maximum 0.8 mm, for hops of several
/// kilometers at high latitudes; 2 mm stated).
#[allow(dead_code)] // the stated bound: the test checks it
pub(crate) const FAST_ERROR_M: f64 = 2e-3;

/// Longest hop (either component, radians of arc: 64 m) that the odometer
/// adds to its way from the anchor instead of measuring the way from the
/// anchor again.
pub(crate) const SUM_WITHIN_RAD: f64 = 1e-5;

/// Largest difference, meters, between the length of such a sum and the
/// cheap path's measurement from the anchor, at latitudes within ±85°:
/// each hop's east component is scaled by the cosine at its own mean
/// latitude, which differs from the anchor-to-fix mean latitude by at most
/// half the way from the anchor (under `stationary_radius`, 10 m by
/// default, or the anchor would have moved): |hop| x |way| / 2 x tan(85°)
/// x R = 1e-5 x 1.6e-6 / 2 x 11.4 x R, under 0.6 mm (for a dead band of
/// 10 m; it grows with the dead band; 0.07 mm measured).
#[allow(dead_code)] // the stated bound: the test checks it
pub(crate) const SUM_ERROR_M: f64 = 6e-4;

/// The length, meters, of a way given by its east and north components in
/// radians of arc (as [`Hop::short`]).
pub(crate) fn length_m((x, y): (f64, f64)) -> f64 {
    EARTH_RADIUS_M * (x * x + y * y).sqrt()
}

/// Largest difference between [`bearing_deg`] and the great-circle
/// initial bearing on the cheap path, for hops of a meter or more (the
/// engine's condition for a heading), at latitudes within ±85°: degrees.
/// The cheap bearing is the direction at the pair's mean latitude, which
/// differs from the initial one by half the meridians' convergence over
/// the hop.
#[allow(dead_code)] // the stated bound: the test checks it
pub(crate) const FAST_BEARING_ERROR_DEG: f64 = 0.05;

/// The way from one point to another, measured once: its distance now,
/// its bearing when asked (a fix's distance and heading share the work).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hop {
    /// Meters (see [`distance_m`]).
    pub(crate) distance_m: f64,
    /// East and north components in radians of arc, for a short hop.
    short: Option<(f64, f64)>,
    from: (f64, f64),
    to: (f64, f64),
}

impl Hop {
    /// The hop between two points given in degrees.
    pub(crate) fn new(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> Hop {
        let mut dlon = lon2 - lon1;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let (dp, dl) = (p2 - p1, dlon.to_radians());
        let (from, to) = ((lat1, lon1), (lat2, lon2));
        if dp.abs() < FAST_WITHIN_RAD && dl.abs() < FAST_WITHIN_RAD {
            let (x, y) = (dl * cos_lat(0.5 * (p1 + p2)), dp);
            return Hop { distance_m: length_m((x, y)), short: Some((x, y)), from, to };
        }
        Hop { distance_m: haversine_m(lat1, lon1, lat2, lon2), short: None, from, to }
    }

    /// Whether the cheap path measured it.
    #[cfg(test)]
    fn is_short(&self) -> bool {
        self.short.is_some()
    }

    /// Its east and north components in radians of arc, when the cheap
    /// path measured it.
    pub(crate) fn short(&self) -> Option<(f64, f64)> {
        self.short
    }

    /// Its bearing (see [`bearing_deg`]).
    pub(crate) fn bearing_deg(&self) -> f64 {
        let deg = match self.short {
            Some((x, y)) => atan2_fast(x, y).to_degrees(),
            None => initial_bearing_deg(self.from.0, self.from.1, self.to.0, self.to.1),
        };
        if deg < 0.0 { deg + 360.0 } else { deg }
    }
}

/// The cosine of a latitude in radians (|x| <= pi/2), from its Taylor
/// series to the x^16 term (evaluated in Estrin's scheme, so the
/// multiplications do not wait for each other): off by less than 1e-10
/// there (6.6e-11 at the poles), a fraction of a micrometer on any short
/// hop, and no libm call.
fn cos_lat(x: f64) -> f64 {
    const C: [f64; 9] = [
        1.0,
        -1.0 / 2.0,
        1.0 / 24.0,
        -1.0 / 720.0,
        1.0 / 40_320.0,
        -1.0 / 3_628_800.0,
        1.0 / 479_001_600.0,
        -1.0 / 87_178_291_200.0,
        1.0 / 20_922_789_888_000.0,
    ];
    let s = x * x;
    let (s2, s4) = (s * s, s * s * s * s);
    let low = (C[0] + C[1] * s) + s2 * (C[2] + C[3] * s);
    let high = (C[4] + C[5] * s) + s2 * (C[6] + C[7] * s);
    low + s4 * (high + s4 * C[8])
}

/// Largest error of [`atan2_fast`] in radians (Abramowitz & Stegun 4.4.49:
/// 1e-5 rad; 1.15e-5 rad measured with the seven-digit coefficients, so
/// 1.2e-5 rad, 0.0007 degrees, stated).
#[cfg(test)]
const ATAN2_FAST_ERROR_RAD: f64 = 1.2e-5;

/// `y.atan2(x)` from a degree-9 polynomial (Abramowitz & Stegun 4.4.49)
/// on the octant and its symmetries: within [`ATAN2_FAST_ERROR_RAD`], and
/// exact on the axes.
fn atan2_fast(y: f64, x: f64) -> f64 {
    use std::f64::consts::{FRAC_PI_2, PI};
    let (ax, ay) = (x.abs(), y.abs());
    if ax == 0.0 && ay == 0.0 {
        return 0.0;
    }
    let (a, steep) = if ay > ax { (ax / ay, true) } else { (ay / ax, false) };
    let s = a * a;
    let s2 = s * s;
    let p = (0.999_866_0 + s * -0.330_299_5)
        + s2 * ((0.180_141_0 + s * -0.085_133_0) + s2 * 0.020_835_1);
    let mut r = a * p;
    if steep {
        r = FRAC_PI_2 - r;
    }
    if x < 0.0 {
        r = PI - r;
    }
    if y < 0.0 { -r } else { r }
}

/// Great-circle distance in meters between two points given in degrees:
/// within [`FAST_ERROR_M`] of [`haversine_m`] for short hops, which it
/// computes without a libm call but the square root; haversine otherwise.
#[cfg(test)]
pub(crate) fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Hop::new(lat1, lon1, lat2, lon2).distance_m
}

/// Great-circle distance in meters (haversine formula; accurate to ~0.5 %
/// against the ellipsoid, and well conditioned for short distances).
pub(crate) fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Bearing in degrees (0 ..< 360, clockwise from true north) from the
/// first point to the second: within [`FAST_BEARING_ERROR_DEG`] of the
/// great-circle initial bearing for short hops (polynomials for the cosine
/// and the arctangent), exactly it otherwise.
#[cfg(test)]
pub(crate) fn bearing_deg(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Hop::new(lat1, lon1, lat2, lon2).bearing_deg()
}

/// The great-circle initial bearing, degrees in (-180, 180].
fn initial_bearing_deg(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dl = (lon2 - lon1).to_radians();
    let (sp1, cp1) = p1.sin_cos();
    let (sp2, cp2) = p2.sin_cos();
    let (sdl, cdl) = dl.sin_cos();
    (sdl * cp2).atan2(cp1 * sp2 - sp1 * cp2 * cdl).to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        // One degree of latitude is ~111.2 km on the mean sphere.
        let d = distance_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 5.0, "{d}");
        // Munich -> Berlin, ~504 km great circle.
        let d = distance_m(48.1372, 11.5755, 52.5200, 13.4050);
        assert!((d - 504_000.0).abs() < 3_000.0, "{d}");
        // Across the antimeridian the short way round, both paths.
        let d = distance_m(0.0, 179.9, 0.0, -179.9);
        assert!((d - 22_239.0).abs() < 5.0, "{d}");
        let d = distance_m(0.0, 179.9999, 0.0, -179.9999);
        assert!((d - 22.239).abs() < 0.01, "{d}");
        assert_eq!(distance_m(10.0, 10.0, 10.0, 10.0), 0.0);
        // 100 m north on the cheap path.
        let step = 100.0 / EARTH_RADIUS_M * 180.0 / std::f64::consts::PI;
        let d = distance_m(48.0, 11.0, 48.0 + step, 11.0);
        assert!((d - 100.0).abs() < 1e-6, "{d}");
    }

    #[test]
    fn known_bearings() {
        for (lat2, lon2, want) in
            [(1.0, 0.0, 0.0), (0.0, 1.0, 90.0), (-1.0, 0.0, 180.0), (0.0, -1.0, 270.0)]
        {
            assert!((bearing_deg(0.0, 0.0, lat2, lon2) - want).abs() < 1e-9);
            // The same directions over 11 m, on the cheap path.
            let b = bearing_deg(0.0, 0.0, lat2 * 1e-4, lon2 * 1e-4);
            assert!((b - want).abs() < 1e-9, "{b} {want}");
        }
    }

    #[test]
    fn polynomials_are_within_their_bounds() {
        let mut worst = (0.0f64, 0.0f64);
        for k in 0..=200_000 {
            let x = (k as f64 / 100_000.0 - 1.0) * std::f64::consts::FRAC_PI_2;
            worst.0 = worst.0.max((cos_lat(x) - x.cos()).abs());
            let t = k as f64 / 200_000.0 * std::f64::consts::TAU;
            for r in [1e-9, 1.0, 3e3] {
                let (y, x) = (r * t.sin(), r * t.cos());
                let d = (atan2_fast(y, x) - y.atan2(x)).abs();
                // The same angle either side of the cut at +-pi.
                worst.1 = worst.1.max(d.min(std::f64::consts::TAU - d));
            }
        }
        assert!(worst.0 < 1e-10, "cosine off by {}", worst.0);
        assert!(worst.1 <= ATAN2_FAST_ERROR_RAD, "arctangent off by {}", worst.1);
        for (y, x) in [(0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0), (0.0, 0.0)] {
            assert_eq!(atan2_fast(y, x), f64::atan2(y, x), "({y}, {x})");
        }
    }

    /// A small deterministic generator (xorshift), so the test needs no
    /// crate and always sees the same points.
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn fast_path_error_is_within_its_bound() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let (mut worst_d, mut worst_b, mut short) = (0.0f64, 0.0f64, 0);
        for i in 0..400_000 {
            // Latitudes to ±89.9° (±85° for bearings), every longitude,
            // hops up to twice the cheap path's reach so both paths run.
            let lat1 = (rng.unit() * 2.0 - 1.0) * 89.9;
            let lon1 = (rng.unit() * 2.0 - 1.0) * 180.0;
            let reach = FAST_WITHIN_RAD.to_degrees() * 2.0;
            // Every fourth pair a short hop of meters, as fixes come.
            let scale = if i % 4 == 0 { 1e-3 } else { 1.0 };
            let lat2 = (lat1 + (rng.unit() * 2.0 - 1.0) * reach * scale).clamp(-89.99, 89.99);
            let mut lon2 = lon1 + (rng.unit() * 2.0 - 1.0) * reach * scale;
            if lon2 > 180.0 {
                lon2 -= 360.0;
            }
            let (fast, exact) =
                (distance_m(lat1, lon1, lat2, lon2), haversine_m(lat1, lon1, lat2, lon2));
            let err = (fast - exact).abs();
            if Hop::new(lat1, lon1, lat2, lon2).is_short() {
                short += 1;
                worst_d = worst_d.max(err);
                if exact >= 1.0 && lat1.abs() <= 85.0 && lat2.abs() <= 85.0 {
                    let b = bearing_deg(lat1, lon1, lat2, lon2);
                    let e = initial_bearing_deg(lat1, lon1, lat2, lon2);
                    let e = if e < 0.0 { e + 360.0 } else { e };
                    let diff = (b - e).abs();
                    worst_b = worst_b.max(diff.min(360.0 - diff));
                }
            } else {
                assert_eq!(fast, exact);
            }
        }
        assert!(short > 100_000, "{short} short hops");
        assert!(worst_d <= FAST_ERROR_M, "distance off by {worst_d} m");
        assert!(worst_b <= FAST_BEARING_ERROR_DEG, "bearing off by {worst_b} degrees");
        // The bound is not loose by orders of magnitude either.
        assert!(worst_d > FAST_ERROR_M / 10.0, "{worst_d}");
    }
    #[test]
    fn summed_ways_are_within_their_bound() {
        // Walks of short hops from an anchor, at latitudes to ±85°: the
        // way kept as the sum of the hops (in f32 between fixes, as the
        // track keeps it) against the cheap path's measurement from the
        // anchor, while the way stays within a 10 m dead band.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut worst, mut sums) = (0.0f64, 0u32);
        let to_deg = |r: f64| r.to_degrees();
        for _ in 0..50_000 {
            let (alat, alon) = ((rng.unit() * 2.0 - 1.0) * 85.0, (rng.unit() * 2.0 - 1.0) * 180.0);
            let (mut lat, mut lon) = (alat, alon);
            let mut way = (0.0f32, 0.0f32);
            for _ in 0..50 {
                // Hops up to the summing limit, in any direction, most of
                // them of a meter or less (a parked receiver's jitter).
                let (dn, de) = ((rng.unit() * 2.0 - 1.0), (rng.unit() * 2.0 - 1.0));
                let scale = SUM_WITHIN_RAD * 10f64.powf(-3.0 * rng.unit());
                let lat2 = (lat + to_deg(dn * scale * 0.999)).clamp(-85.0, 85.0);
                let lon2 = lon + to_deg(de * scale);
                let hop = Hop::new(lat, lon, lat2, lon2);
                let Some((x, y)) = hop.short() else { panic!("a short hop") };
                if x.abs().max(y.abs()) >= SUM_WITHIN_RAD {
                    break;
                }
                let v = (f64::from(way.0) + x, f64::from(way.1) + y);
                let measured = distance_m(alat, alon, lat2, lon2);
                worst = worst.max((length_m(v) - measured).abs());
                sums += 1;
                if measured >= 10.0 {
                    break;
                }
                way = (v.0 as f32, v.1 as f32);
                (lat, lon) = (lat2, lon2);
            }
        }
        assert!(sums > 200_000, "{sums} sums");
        assert!(worst <= SUM_ERROR_M, "a summed way was {worst} m off");
        // Not loose by orders of magnitude either.
        assert!(worst > SUM_ERROR_M / 100.0, "{worst}");
    }
}
