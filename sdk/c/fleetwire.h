/*
 * fleetwire device SDK for C99: encoder, decoder, CRC-32C and the optional
 * HMAC-SHA-256 authentication tag of the fleetwire wire protocol, version 1
 * (proto/PROTOCOL.md).
 *
 * - No allocation, no stdio, no OS: only <stdint.h>, <stddef.h>, <string.h>.
 * - The caller passes every buffer. Nothing is kept between calls except
 *   in the caller's own fw_device.
 * - Every function returns an fw_result (fw_result_str() returns a label).
 * - Usable from C++ (extern "C").
 *
 * Compile-time options (define them when compiling fleetwire.c):
 *   FW_CRC_BITWISE  CRC-32C bit by bit: no table (smallest flash, slowest)
 *   FW_CRC_NIBBLE   CRC-32C with a 64-byte table (4 bits at a time)
 *                   (default: 1 KiB table, 8 bits at a time)
 *   FW_NO_HMAC      no SHA-256 / HMAC: signing or verifying returns
 *                   FW_ERR_UNSUPPORTED
 *   FW_NO_DECODE    no decoder (a sender only needs the encoder)
 *
 * Wire values are used throughout (1e-7 degree, decimeter, cm/s, ...), as
 * in PROTOCOL.md section 4.
 */
#ifndef FLEETWIRE_H
#define FLEETWIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Constants of the protocol (PROTOCOL.md sections 2 - 4)
 */
#define FW_PROTOCOL_VERSION 1u
#define FW_FLAG_AUTH 0x01u
#define FW_HEADER_LEN 21u
#define FW_TAG_LEN 16u
#define FW_CRC_LEN 4u
#define FW_MIN_FRAME_LEN 25u
#define FW_MAX_FRAME_LEN 1200u
#define FW_MAX_POSITION_FRAME_LEN 48u
#define FW_MAX_READINGS 32u
#define FW_MAX_NAME_LEN 32u
#define FW_MAX_EVENT_TEXT_LEN 64u
#define FW_MAX_HELLO_TEXT_LEN 32u
#define FW_MAX_BATCH_SAMPLES 128u

/* Range limits of the checked fields. */
#define FW_LAT_MAX 900000000
#define FW_LON_MAX 1800000000
#define FW_ALT_MAX 1000000
#define FW_HEADING_MAX 3599u
#define FW_BATTERY_MAX 100u

/* Sequence numbers of a signing device kept in non-volatile memory
 * (PROTOCOL.md 2.1): save every 65536th value, continue at boot from the
 * saved value + 131072. */
#define FW_SEQ_SAVE_EVERY 65536u
#define FW_SEQ_BOOT_JUMP 131072u

/* ------------------------------------------------------------------------
 * Result codes
 *
 * FW_ERR_TOO_SHORT ... FW_ERR_BAD_AUTH_TAG are the refusals of PROTOCOL.md
 * section 7, in check order; fw_result_str() gives the same label as the
 * Rust DecodeError::as_str() ("too_short", "bad_checksum", ...). The
 * encoder refuses to write a frame a receiver would refuse, with the code
 * of the rule it breaks.
 */
typedef enum fw_result {
    FW_OK = 0,
    FW_ERR_TOO_SHORT,           /* "too_short" */
    FW_ERR_TOO_LONG,            /* "too_long": also, the frame would exceed 1200 bytes */
    FW_ERR_BAD_MAGIC,           /* "bad_magic" */
    FW_ERR_UNSUPPORTED_VERSION, /* "unsupported_version" */
    FW_ERR_BAD_CHECKSUM,        /* "bad_checksum" */
    FW_ERR_UNKNOWN_FLAGS,       /* "unknown_flags" */
    FW_ERR_UNKNOWN_KIND,        /* "unknown_kind" */
    FW_ERR_BAD_DEVICE_ID,       /* "bad_device_id" */
    FW_ERR_MALFORMED_PAYLOAD,   /* "malformed_payload": also, text that is not UTF-8 */
    FW_ERR_TRAILING_BYTES,      /* "trailing_bytes" */
    FW_ERR_OUT_OF_RANGE,        /* "out_of_range" */
    FW_ERR_TOO_MANY_ITEMS,      /* "too_many_items" */
    FW_ERR_BAD_NAME,            /* "bad_name" */
    FW_ERR_BAD_BATCH,           /* "bad_batch" */
    FW_ERR_BAD_AUTH_TAG,        /* "bad_auth_tag" */
    /* Not decode refusals: */
    FW_ERR_BUFFER_TOO_SMALL,    /* "buffer_too_small": the frame fits 1200 bytes, not the buffer */
    FW_ERR_INVALID_ARGUMENT,    /* "invalid_argument": a NULL pointer, a frame without tag to verify */
    FW_ERR_UNSUPPORTED,         /* "unsupported": compiled out (FW_NO_HMAC, FW_NO_DECODE) */
    FW_END                      /* "end": an iterator has no item left */
} fw_result;

/* The stable label of a result code ("ok", "too_short", ...); never NULL.
 * (The one function that does not return an fw_result.) */
const char *fw_result_str(fw_result r);

/* ------------------------------------------------------------------------
 * Frame content
 */
typedef enum fw_kind {
    FW_KIND_POSITION = 1,
    FW_KIND_MONITORING = 2,
    FW_KIND_EVENT = 3,
    FW_KIND_HELLO = 4,
    FW_KIND_BATCH = 5
} fw_kind;

typedef enum fw_fix {
    FW_FIX_NONE = 0,
    FW_FIX_2D = 1,
    FW_FIX_3D = 2,
    FW_FIX_DGNSS = 3,
    FW_FIX_RTK_FLOAT = 4,
    FW_FIX_RTK_FIXED = 5
} fw_fix;

typedef enum fw_severity {
    FW_SEV_INFO = 0,
    FW_SEV_NOTICE = 1,
    FW_SEV_WARNING = 2,
    FW_SEV_ERROR = 3,
    FW_SEV_CRITICAL = 4
} fw_severity;

/* Hello capability bits. */
#define FW_CAP_GNSS 0x01u
#define FW_CAP_MONITORING 0x02u
#define FW_CAP_EVENTS 0x04u
#define FW_CAP_BATCH 0x08u
#define FW_CAP_AUTH 0x10u
#define FW_CAP_QUIC 0x20u

/* Bytes with a length, not NUL-terminated (decoded strings point into the
 * datagram). FW_STR("literal") initializes one from a string literal. */
typedef struct fw_str {
    const char *ptr;
    size_t len;
} fw_str;
#define FW_STR(lit) { (lit), sizeof(lit) - 1u }

/* A device key for the authentication tag (any length; 32 random bytes
 * recommended). Pass NULL where a key is asked for to send unsigned. */
typedef struct fw_key {
    const uint8_t *bytes;
    size_t len;
} fw_key;

/* Header fields (the magic, version, flags and kind are the library's). */
typedef struct fw_header {
    uint32_t device_id; /* 1 ..= 4294967295 */
    uint32_t sequence;  /* per device, +1 per frame, wraps */
    uint64_t timestamp_ms; /* Unix ms, UTC; 0 = no clock */
} fw_header;

/* Kind 1. */
typedef struct fw_position {
    int32_t lat_e7;        /* 1e-7 degree, -900000000 ..= 900000000 */
    int32_t lon_e7;        /* 1e-7 degree, -1800000000 ..= 1800000000 */
    int32_t alt_dm;        /* decimeter, -1000000 ..= 1000000 */
    uint16_t speed_cm_s;   /* cm/s */
    uint16_t heading_ddeg; /* 0.1 degree, 0 ..= 3599 */
    uint16_t hacc_cm;      /* cm, 0 = unknown */
    uint8_t fix;           /* fw_fix, 0 ..= 5 */
    uint8_t satellites;
} fw_position;

/* A named reading: name 1 to 32 bytes of [A-Za-z0-9_.-], first byte
 * [A-Za-z_], unique in its record; value finite. */
typedef struct fw_reading {
    fw_str name;
    double value;
} fw_reading;

/* fw_monitoring.present: which optional fields are set. */
#define FW_HAS_BATTERY 0x01u
#define FW_HAS_SUPPLY 0x02u
#define FW_HAS_TEMPERATURE 0x04u
#define FW_HAS_RSSI 0x08u
#define FW_HAS_UPTIME 0x10u

/* Kind 2. To encode, point `readings` at `reading_count` readings (and
 * leave `readings_wire` NULL). The decoder sets `readings` to NULL and
 * `readings_wire` to the checked bytes of the readings inside the
 * datagram; read them with fw_readings_begin / fw_readings_next (which
 * works for both forms, so a decoded record can be encoded again). */
typedef struct fw_monitoring {
    uint8_t present;          /* FW_HAS_* bits */
    uint8_t battery_pct;      /* 0 ..= 100 */
    uint16_t supply_mv;
    int16_t temperature_cdeg; /* 0.01 degree C */
    int8_t rssi_dbm;
    uint32_t uptime_s;
    size_t reading_count;     /* 0 ..= 32 */
    const fw_reading *readings;
    const uint8_t *readings_wire;
    size_t readings_wire_len;
} fw_monitoring;

/* Kind 3. text.ptr == NULL: no text; otherwise 0 to 64 bytes of UTF-8. */
typedef struct fw_event {
    uint16_t code;
    uint8_t severity; /* fw_severity, 0 ..= 4 */
    fw_str text;
} fw_event;

/* Kind 4. Each string 0 to 32 bytes of UTF-8. */
typedef struct fw_hello {
    fw_str firmware;
    fw_str model;
    uint32_t capabilities; /* FW_CAP_* bits; others are kept */
} fw_hello;

/* One sample of a batch: kind is FW_KIND_POSITION, _MONITORING or _EVENT,
 * and selects the member of `record`. */
typedef struct fw_sample {
    uint32_t offset_ms; /* ms before the frame's timestamp */
    uint8_t kind;
    union {
        fw_position position;
        fw_monitoring monitoring;
        fw_event event;
    } record;
} fw_sample;

/* Kind 5: 1 ..= 128 samples. As for readings: `samples` to encode, or
 * `samples_wire` as set by the decoder; read with fw_samples_begin/next. */
typedef struct fw_batch {
    size_t sample_count;
    const fw_sample *samples;
    const uint8_t *samples_wire;
    size_t samples_wire_len;
} fw_batch;

/* A whole frame. `kind` selects the member of `body`. The decoder also
 * sets `tag` (NULL when the frame has none) and `signed_bytes` /
 * `signed_len` (what the tag covers), for fw_frame_verify; the encoder
 * ignores these three. */
typedef struct fw_frame {
    fw_header header;
    uint8_t kind;
    union {
        fw_position position;
        fw_monitoring monitoring;
        fw_event event;
        fw_hello hello;
        fw_batch batch;
    } body;
    const uint8_t *tag;
    const uint8_t *signed_bytes;
    size_t signed_len;
} fw_frame;

/* ------------------------------------------------------------------------
 * Encoding
 *
 * Each encoder checks every value (FW_ERR_OUT_OF_RANGE, FW_ERR_BAD_NAME,
 * ... as a receiver would), writes the frame into buf[0 .. cap) and sets
 * *out_len to its length. With `key` non-NULL the AUTH flag is set and the
 * 16-byte tag is added. FW_ERR_TOO_LONG: the frame would be longer than
 * 1200 bytes; FW_ERR_BUFFER_TOO_SMALL: it would not fit `cap` bytes
 * (buf may be NULL with cap 0 to learn the length: *out_len is set to it
 * in that case too). On any error the frame in buf is unusable.
 */
fw_result fw_encode_position(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                             const fw_position *p, const fw_key *key);
fw_result fw_encode_monitoring(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                               const fw_monitoring *m, const fw_key *key);
fw_result fw_encode_event(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                          const fw_event *e, const fw_key *key);
fw_result fw_encode_hello(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                          const fw_hello *hello, const fw_key *key);
fw_result fw_encode_batch(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                          const fw_batch *b, const fw_key *key);
/* Any kind: dispatches on f->kind (FW_ERR_UNKNOWN_KIND for others). */
fw_result fw_encode(uint8_t *buf, size_t cap, size_t *out_len, const fw_frame *f,
                    const fw_key *key);

/* ------------------------------------------------------------------------
 * Per-device sequence helper
 *
 * Holds the device id, the next sequence number and an optional key (the
 * key bytes are not copied: keep them alive). Each fw_device_* encoder
 * uses the next number and advances it (wrapping 4294967295 -> 0) when
 * the frame was written; a frame that failed to encode uses no number.
 * Once written, send the frame (or not): its number is spent either way.
 */
typedef struct fw_device {
    uint32_t device_id;
    uint32_t next_sequence;
    fw_key key;
    uint8_t has_key;
} fw_device;

/* key may be NULL (unsigned device). first_sequence: 0 at boot for an
 * unsigned device; see fw_device_resume for a signing one. */
fw_result fw_device_init(fw_device *d, uint32_t device_id, uint32_t first_sequence,
                         const fw_key *key);
/* A signing device at boot: continue from the value saved in non-volatile
 * memory + FW_SEQ_BOOT_JUMP (PROTOCOL.md 2.1). */
fw_result fw_device_resume(fw_device *d, uint32_t device_id, uint32_t saved_sequence,
                           const fw_key *key);
/* Sets *due to 1 (and *value to the number to save) when the next number
 * is a multiple of FW_SEQ_SAVE_EVERY: save it before sending that frame. */
fw_result fw_device_save_due(const fw_device *d, uint8_t *due, uint32_t *value);

fw_result fw_device_position(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                             uint64_t timestamp_ms, const fw_position *p);
fw_result fw_device_monitoring(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                               uint64_t timestamp_ms, const fw_monitoring *m);
fw_result fw_device_event(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                          uint64_t timestamp_ms, const fw_event *e);
fw_result fw_device_hello(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                          uint64_t timestamp_ms, const fw_hello *hello);
fw_result fw_device_batch(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                          uint64_t timestamp_ms, const fw_batch *b);

/* ------------------------------------------------------------------------
 * Decoding (unless FW_NO_DECODE)
 *
 * Checks one datagram completely, in the order of PROTOCOL.md section 7,
 * and returns the first failing check. On FW_OK, *out holds the frame;
 * its strings, readings and samples point into `datagram`, which must
 * outlive it. A tag is not verified here: look up the device's key by
 * out->header.device_id, then call fw_frame_verify.
 */
fw_result fw_decode(const uint8_t *datagram, size_t len, fw_frame *out);
/* FW_OK when the decoded frame's tag verifies with key (constant-time
 * comparison); FW_ERR_BAD_AUTH_TAG when not; FW_ERR_INVALID_ARGUMENT when
 * the frame has no tag. */
fw_result fw_frame_verify(const fw_frame *f, const fw_key *key);

/* ------------------------------------------------------------------------
 * Iterating readings and batch samples (of a decoded frame or of one
 * built to encode): FW_OK with the next item, then FW_END.
 */
typedef struct fw_reading_iter {
    const fw_reading *items;
    const uint8_t *wire;
    const uint8_t *wire_end;
    size_t left;
} fw_reading_iter;
fw_result fw_readings_begin(const fw_monitoring *m, fw_reading_iter *it);
fw_result fw_readings_next(fw_reading_iter *it, fw_reading *out);

typedef struct fw_sample_iter {
    const fw_sample *items;
    const uint8_t *wire;
    const uint8_t *wire_end;
    size_t left;
} fw_sample_iter;
fw_result fw_samples_begin(const fw_batch *b, fw_sample_iter *it);
/* Decoded samples are read again from the wire: needs the decoder
 * (FW_ERR_UNSUPPORTED with FW_NO_DECODE). */
fw_result fw_samples_next(fw_sample_iter *it, fw_sample *out);

/* ------------------------------------------------------------------------
 * Primitives
 */
/* CRC-32C (Castagnoli) of p[0 .. n), as in the frame trailer. */
fw_result fw_crc32c(const uint8_t *p, size_t n, uint32_t *out);
/* SHA-256 and HMAC-SHA-256 (unless FW_NO_HMAC). */
fw_result fw_sha256(const uint8_t *msg, size_t n, uint8_t out[32]);
fw_result fw_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t n,
                         uint8_t out[32]);

#ifdef __cplusplus
}
#endif

#endif /* FLEETWIRE_H */
