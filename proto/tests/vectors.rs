//! The codec against every golden vector in `vectors/`, in both directions,
//! and the exhaustive single-bit-flip check.

use fleetwire_proto::json::{encode_json, frame_to_json};
use fleetwire_proto::{DecodeError, decode};
use serde_json::Value;

fn load(file: &str) -> Vec<Value> {
    let path = format!("{}/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bytes(v: &Value, key: &str) -> Option<Vec<u8>> {
    v.get(key).map(|h| hex::decode(h.as_str().expect("hex string")).expect("hex"))
}

#[test]
fn there_are_enough_vectors() {
    let valid = load("valid.json");
    let invalid = load("invalid.json");
    assert!(valid.len() >= 12, "{} valid vectors", valid.len());
    assert!(invalid.len() >= 12, "{} invalid vectors", invalid.len());
    // Every kind appears among the valid vectors, signed and unsigned.
    for kind in ["position", "monitoring", "event", "hello", "batch"] {
        assert!(valid.iter().any(|v| v["frame"]["kind"] == kind), "no valid {kind} vector");
    }
    assert!(valid.iter().any(|v| v["frame"]["auth"] == true));
    // Every error variant has at least one invalid vector.
    for e in DecodeError::ALL {
        assert!(invalid.iter().any(|v| v["error"] == e.as_str()), "no vector for {}", e.as_str());
    }
}

/// The fuzz target starts from every golden vector: each has its seed
/// file, `fuzz/seeds/decode/<name>`, holding its bytes.
#[test]
fn every_vector_is_a_fuzz_seed() {
    let seeds = format!("{}/fuzz/seeds/decode", env!("CARGO_MANIFEST_DIR"));
    for v in load("valid.json").iter().chain(&load("invalid.json")) {
        let name = v["name"].as_str().expect("name");
        let seed = std::fs::read(format!("{seeds}/{name}"))
            .unwrap_or_else(|e| panic!("no seed for vector {name}: {e}"));
        assert_eq!(seed, bytes(v, "hex").expect("hex"), "seed {name} differs from its vector");
    }
}

#[test]
fn valid_vectors_decode_to_their_fields() {
    for v in load("valid.json") {
        let name = v["name"].as_str().unwrap();
        let raw = bytes(&v, "hex").unwrap();
        assert_eq!(raw.len() as u64, v["length"].as_u64().unwrap(), "{name}: length");
        let frame = decode(&raw).unwrap_or_else(|e| panic!("{name}: refused with {e}"));
        assert_eq!(frame_to_json(&frame), v["frame"], "{name}: decoded fields");
        match (bytes(&v, "key_hex"), frame.auth) {
            (Some(key), Some(tag)) => tag.verify(&key).unwrap_or_else(|e| panic!("{name}: {e}")),
            (None, None) => {}
            _ => panic!("{name}: key_hex and the auth flag disagree"),
        }
    }
}

#[test]
fn valid_vectors_encode_from_their_fields() {
    for v in load("valid.json") {
        let name = v["name"].as_str().unwrap();
        if v.get("canonical") == Some(&Value::Bool(false)) {
            continue;
        }
        let key = bytes(&v, "key_hex");
        let encoded = encode_json(&v["frame"], key.as_deref())
            .unwrap_or_else(|e| panic!("{name}: cannot encode: {e}"));
        assert_eq!(hex::encode(&encoded), v["hex"].as_str().unwrap(), "{name}: encoded bytes");
    }
}

#[test]
fn invalid_vectors_are_refused_with_their_reason() {
    for v in load("invalid.json") {
        let name = v["name"].as_str().unwrap();
        let raw = bytes(&v, "hex").unwrap();
        let want = v["error"].as_str().unwrap();
        let got = match decode(&raw) {
            Err(e) => e,
            Ok(frame) => {
                let key = bytes(&v, "key_hex").unwrap_or_else(|| panic!("{name}: accepted"));
                let tag = frame.auth.unwrap_or_else(|| panic!("{name}: accepted without tag"));
                tag.verify(&key).expect_err(name)
            }
        };
        assert_eq!(got.as_str(), want, "{name}");
        assert_eq!(DecodeError::from_label(want), Some(got));
    }
}

#[test]
fn every_single_bit_flip_of_every_valid_vector_is_refused() {
    let mut flips = 0usize;
    for v in load("valid.json") {
        let name = v["name"].as_str().unwrap();
        let raw = bytes(&v, "hex").unwrap();
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut m = raw.clone();
                m[byte] ^= 1 << bit;
                assert!(decode(&m).is_err(), "{name}: flip of byte {byte} bit {bit} accepted");
                flips += 1;
            }
        }
    }
    assert!(flips > 10_000, "only {flips} flips tried");
}
