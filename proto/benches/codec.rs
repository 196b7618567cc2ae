//! Micro-benchmark: decode (with CRC) and encode per kind, tag verification,
//! and CRC-32C hardware vs portable at datagram sizes.
//!
//! ```sh
//! cargo bench -p fleetwire-proto --bench codec
//! ```
//!
//! Prints a Markdown table. Each figure is the median of 15 rounds, a round
//! being enough calls to take about 20 ms; the spread (min..max of the
//! rounds) shows how noisy the machine was.

use std::hint::black_box;
use std::time::Instant;

use fleetwire_proto::{Frame, crc32c, crc32c_portable, decode, encode};
use serde_json::Value;

fn median_ns(mut f: impl FnMut()) -> (f64, f64, f64) {
    // Calibrate: how many calls take ~20 ms.
    let mut n = 1_000u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed().as_millis() >= 20 {
            break;
        }
        n *= 2;
    }
    let mut rounds: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    (rounds[7], rounds[0], rounds[14])
}

fn row(what: &str, bytes: usize, (med, lo, hi): (f64, f64, f64)) {
    println!("| {what} | {bytes} | {med:.1} | {lo:.1} .. {hi:.1} |");
}

fn main() {
    let path = format!("{}/vectors/valid.json", env!("CARGO_MANIFEST_DIR"));
    let vectors: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("vectors")).expect("json");
    let get = |name: &str| -> (Vec<u8>, Option<Vec<u8>>) {
        let v = vectors.iter().find(|v| v["name"] == name).expect(name);
        let hex = |s: &str| {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        (hex(v["hex"].as_str().unwrap()), v.get("key_hex").map(|k| hex(k.as_str().unwrap())))
    };

    println!("| operation | frame bytes | median ns | min .. max ns |");
    println!("|---|---:|---:|---:|");
    for name in [
        "position_basic",
        "position_largest",
        "monitoring_full",
        "monitoring_32_readings",
        "event_with_text",
        "hello",
        "batch_mixed",
        "batch_128_events",
    ] {
        let (bytes, _) = get(name);
        row(
            &format!("decode + CRC `{name}`"),
            bytes.len(),
            median_ns(|| {
                let _ = black_box(decode(black_box(&bytes)));
            }),
        );
        // Decode and walk every reading / sample, as the server does.
        if name.starts_with("monitoring") || name.starts_with("batch") {
            row(
                &format!("decode + CRC + iterate `{name}`"),
                bytes.len(),
                median_ns(|| {
                    if let Ok(f) = decode(black_box(&bytes)) {
                        match f.body {
                            fleetwire_proto::Body::Monitoring(m) => {
                                black_box(m.readings.iter().map(|r| r.value).sum::<f64>());
                            }
                            fleetwire_proto::Body::Batch(b) => {
                                black_box(b.samples.iter().map(|s| s.offset_ms).sum::<u32>());
                            }
                            _ => {}
                        }
                    }
                }),
            );
        }
        let frame: Frame<'_> = decode(&bytes).expect("valid");
        let mut out = [0u8; 1200];
        row(
            &format!("encode `{name}`"),
            bytes.len(),
            median_ns(|| {
                let _ = black_box(encode(black_box(&frame), &mut out));
            }),
        );
    }
    let (signed, key) = get("position_signed");
    let key = key.expect("key");
    row(
        "decode + CRC + HMAC verify `position_signed`",
        signed.len(),
        median_ns(|| {
            if let Ok(f) = decode(black_box(&signed)) {
                let _ = black_box(f.auth.map(|a| a.verify(&key)));
            }
        }),
    );
    let data: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
    for n in [48, 100, 200] {
        row(
            "CRC-32C, hardware-dispatched (`crc32c` crate)",
            n,
            median_ns(|| {
                black_box(crc32c(black_box(&data[..n])));
            }),
        );
        row(
            "CRC-32C, portable table (`crc` crate, no_std path)",
            n,
            median_ns(|| {
                black_box(crc32c_portable(black_box(&data[..n])));
            }),
        );
    }
}
