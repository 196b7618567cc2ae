//! Any bytes: `decode` returns a frame or an error, never panics; whatever
//! decodes re-encodes to bytes that decode to the same frame.
#![no_main]

use fleetwire_proto::{decode, encode, Frame, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(data) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode(&frame, &mut buf).expect("a decoded frame re-encodes");
        let again = decode(&buf[..n]).expect("a re-encoded frame decodes");
        assert_eq!(again, Frame { auth: None, ..frame });
        // Iterating the checked views never fails.
        match frame.body {
            fleetwire_proto::Body::Monitoring(m) => assert_eq!(m.readings.iter().count(), m.readings.len()),
            fleetwire_proto::Body::Batch(b) => assert_eq!(b.samples.iter().count(), b.samples.len()),
            _ => {}
        }
    }
});
