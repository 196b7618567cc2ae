//! Simulated devices: plausible motion, health readings and events, encoded
//! as wire frames. Deterministic for a seed.

use fleetwire_proto::{
    Body, Event, FixType, Frame, Hello, MAX_FRAME_LEN, Monitoring, Position, Reading, Seq,
    Severity, capabilities, encode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::geo::EARTH_RADIUS_M;

/// Motion limits of the simulated vehicles.
const MAX_SPEED: f64 = 30.0; // m/s
const ACCEL: f64 = 2.0; // m/s²
const TURN_RATE: f64 = 15.0; // degrees per second
const GPS_NOISE_M: f64 = 2.5;

/// One simulated device.
pub(crate) struct SimDevice {
    /// Device id.
    pub id: u32,
    rng: StdRng,
    /// Next sequence number.
    pub seq: u32,
    lat: f64,
    lon: f64,
    alt: f64,
    speed: f64,
    target_speed: f64,
    heading: f64,
    turn: f64,
    stopped_for: f64,
    battery: f64,
    temp: f64,
    uptime: f64,
    frames: u64,
}

impl SimDevice {
    /// A device starting somewhere within ~10 km of `center`.
    pub(crate) fn new(id: u32, seed: u64, center: (f64, f64)) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(id) << 20) ^ 0x5eed);
        let r = 10_000.0 * rng.random::<f64>().sqrt();
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        let lat = center.0 + (r * a.cos() / EARTH_RADIUS_M).to_degrees();
        let lon =
            center.1 + (r * a.sin() / (EARTH_RADIUS_M * center.0.to_radians().cos())).to_degrees();
        SimDevice {
            id,
            seq: 0,
            lat,
            lon,
            alt: 500.0 + rng.random::<f64>() * 50.0,
            speed: 0.0,
            target_speed: rng.random::<f64>() * MAX_SPEED,
            heading: rng.random::<f64>() * 360.0,
            turn: 0.0,
            stopped_for: 0.0,
            battery: 60.0 + rng.random::<f64>() * 40.0,
            temp: 15.0 + rng.random::<f64>() * 10.0,
            uptime: 0.0,
            frames: 0,
            rng,
        }
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    /// The boot announcement (sequence 0).
    pub(crate) fn hello(&mut self, now_ms: u64, out: &mut [u8]) -> usize {
        let seq = self.next_seq();
        let body = Body::Hello(Hello {
            firmware: "sim-1.0",
            model: "fleetwire-sim",
            capabilities: capabilities::GNSS | capabilities::MONITORING | capabilities::EVENTS,
        });
        encode(&Frame::new(self.id, seq, now_ms, body), out).unwrap_or(0)
    }

    /// Moves the vehicle by `dt` seconds: speed and acceleration limits,
    /// smooth turns, occasional stops.
    fn advance(&mut self, dt: f64) {
        self.uptime += dt;
        if self.stopped_for > 0.0 {
            self.stopped_for -= dt;
            self.target_speed = 0.0;
            if self.stopped_for <= 0.0 {
                self.target_speed = 5.0 + self.rng.random::<f64>() * (MAX_SPEED - 5.0);
            }
        } else if self.rng.random::<f64>() < 0.01 * dt {
            // A stop: traffic light, delivery.
            self.stopped_for = 10.0 + self.rng.random::<f64>() * 50.0;
        } else if self.rng.random::<f64>() < 0.05 * dt {
            self.target_speed = 5.0 + self.rng.random::<f64>() * (MAX_SPEED - 5.0);
        }
        let dv = (self.target_speed - self.speed).clamp(-ACCEL * dt, ACCEL * dt);
        self.speed = (self.speed + dv).max(0.0);
        if self.rng.random::<f64>() < 0.1 * dt {
            self.turn = (self.rng.random::<f64>() - 0.5) * 2.0 * TURN_RATE;
        }
        if self.speed > 0.5 {
            self.heading = (self.heading + self.turn * dt).rem_euclid(360.0);
        }
        let d = self.speed * dt;
        let h = self.heading.to_radians();
        self.lat += (d * h.cos() / EARTH_RADIUS_M).to_degrees();
        self.lon += (d * h.sin() / (EARTH_RADIUS_M * self.lat.to_radians().cos())).to_degrees();
        self.lat = self.lat.clamp(-85.0, 85.0);
        self.lon = (self.lon + 180.0).rem_euclid(360.0) - 180.0;
        self.battery = (self.battery - 0.002 * dt).max(0.0);
        self.temp += (self.rng.random::<f64>() - 0.5) * 0.05 * dt.sqrt();
    }

    fn gauss(&mut self) -> f64 {
        // Box-Muller.
        let u1: f64 = self.rng.random::<f64>().max(1e-12);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// The next telemetry frame after `dt` seconds: mostly positions, a
    /// monitoring record every 10th frame, an event now and then.
    pub(crate) fn next_frame(&mut self, now_ms: u64, dt: f64, out: &mut [u8]) -> usize {
        self.advance(dt);
        self.frames += 1;
        let seq = self.next_seq();
        let n = if self.frames % 10 == 0 {
            let r = [
                Reading { name: "fuel_level", value: (self.battery / 100.0 * 0.9).clamp(0.0, 1.0) },
                Reading { name: "engine_rpm", value: 800.0 + self.speed * 80.0 },
                Reading { name: "cargo_temp", value: 4.0 + self.gauss() * 0.3 },
            ];
            let rssi = -70.0 + self.gauss() * 6.0;
            let m = Monitoring {
                battery_pct: Some(self.battery.round().clamp(0.0, 100.0) as u8),
                supply_mv: Some((12_400.0 + self.gauss() * 100.0).clamp(0.0, 65_535.0) as u16),
                temperature_cdeg: Some((self.temp * 100.0) as i16),
                rssi_dbm: Some(rssi.clamp(-128.0, 0.0) as i8),
                uptime_s: Some(self.uptime as u32),
                readings: Seq::from_slice(&r),
            };
            encode(&Frame::new(self.id, seq, now_ms, Body::Monitoring(m)), out)
        } else if self.rng.random::<f64>() < 0.01 {
            let (code, severity, text) = match self.rng.random_range(0..3) {
                0 => (1001, Severity::Notice, Some("door open")),
                1 => (2001, Severity::Warning, Some("harsh braking")),
                _ => (3001, Severity::Info, None),
            };
            encode(
                &Frame::new(self.id, seq, now_ms, Body::Event(Event { code, severity, text })),
                out,
            )
        } else {
            let lost_fix = self.rng.random::<f64>() < 0.01;
            let noise_n = self.gauss() * GPS_NOISE_M;
            let noise_e = self.gauss() * GPS_NOISE_M;
            let lat = self.lat + (noise_n / EARTH_RADIUS_M).to_degrees();
            let lon =
                self.lon + (noise_e / (EARTH_RADIUS_M * self.lat.to_radians().cos())).to_degrees();
            let p = if lost_fix {
                Position {
                    lat_e7: 0,
                    lon_e7: 0,
                    alt_dm: 0,
                    speed_cm_s: 0,
                    heading_ddeg: 0,
                    hacc_cm: 0,
                    fix: FixType::NoFix,
                    satellites: 0,
                }
            } else {
                Position {
                    lat_e7: (lat * 1e7).round() as i32,
                    lon_e7: (lon * 1e7).round() as i32,
                    alt_dm: (self.alt * 10.0) as i32,
                    speed_cm_s: (self.speed * 100.0) as u16,
                    heading_ddeg: ((self.heading * 10.0) as u16).min(3599),
                    hacc_cm: (GPS_NOISE_M * 100.0) as u16 + self.rng.random_range(0..100),
                    fix: FixType::Fix3d,
                    satellites: self.rng.random_range(6..14),
                }
            };
            encode(&Frame::new(self.id, seq, now_ms, Body::Position(p)), out)
        };
        n.unwrap_or(0)
    }
}

/// A scratch buffer for one frame.
pub(crate) fn frame_buf() -> [u8; MAX_FRAME_LEN] {
    [0u8; MAX_FRAME_LEN]
}
