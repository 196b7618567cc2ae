/*
 * The C SDK against the golden vectors of proto/vectors (through the header
 * gen_vectors.py makes of them), plus the rules the vectors do not spell
 * out: encoder refusals, buffer sizes, the sequence helper, iterators, and
 * the published SHA-256 / HMAC-SHA-256 test vectors.
 *
 * Prints one line per failure and "N passed, N failed" at the end; exits 1
 * on any failure.
 */
#include <stdio.h>
#include <string.h>

#include "fleetwire.h"

struct valid_vector {
    const char *name;
    const uint8_t *bytes;
    size_t len;
    const uint8_t *key;
    size_t key_len;
    int canonical;
    int auth;
    fw_frame frame;
};

struct invalid_vector {
    const char *name;
    const uint8_t *bytes;
    size_t len;
    const uint8_t *key;
    size_t key_len;
    const char *error;
};

#include "vectors.h"

static unsigned passed, failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

static int bits_eq(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static int str_eq(fw_str a, fw_str b)
{
    if ((a.ptr == NULL) != (b.ptr == NULL) || a.len != b.len) {
        return 0;
    }
    return a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0;
}

static int position_eq(const fw_position *a, const fw_position *b)
{
    return a->lat_e7 == b->lat_e7 && a->lon_e7 == b->lon_e7 && a->alt_dm == b->alt_dm &&
           a->speed_cm_s == b->speed_cm_s && a->heading_ddeg == b->heading_ddeg &&
           a->hacc_cm == b->hacc_cm && a->fix == b->fix && a->satellites == b->satellites;
}

static int monitoring_eq(const fw_monitoring *a, const fw_monitoring *b)
{
    fw_reading_iter ia, ib;
    fw_reading ra, rb;
    size_t n = 0;
    if (a->present != b->present || a->reading_count != b->reading_count) {
        return 0;
    }
    if (((a->present & FW_HAS_BATTERY) && a->battery_pct != b->battery_pct) ||
        ((a->present & FW_HAS_SUPPLY) && a->supply_mv != b->supply_mv) ||
        ((a->present & FW_HAS_TEMPERATURE) && a->temperature_cdeg != b->temperature_cdeg) ||
        ((a->present & FW_HAS_RSSI) && a->rssi_dbm != b->rssi_dbm) ||
        ((a->present & FW_HAS_UPTIME) && a->uptime_s != b->uptime_s)) {
        return 0;
    }
    if (fw_readings_begin(a, &ia) != FW_OK || fw_readings_begin(b, &ib) != FW_OK) {
        return 0;
    }
    for (;;) {
        fw_result x = fw_readings_next(&ia, &ra), y = fw_readings_next(&ib, &rb);
        if (x != y) {
            return 0;
        }
        if (x == FW_END) {
            break;
        }
        if (x != FW_OK || !str_eq(ra.name, rb.name) || !bits_eq(ra.value, rb.value)) {
            return 0;
        }
        n++;
    }
    return n == a->reading_count;
}

static int event_eq(const fw_event *a, const fw_event *b)
{
    return a->code == b->code && a->severity == b->severity && str_eq(a->text, b->text);
}

static int sample_eq(const fw_sample *a, const fw_sample *b)
{
    if (a->offset_ms != b->offset_ms || a->kind != b->kind) {
        return 0;
    }
    switch (a->kind) {
    case FW_KIND_POSITION: return position_eq(&a->record.position, &b->record.position);
    case FW_KIND_MONITORING: return monitoring_eq(&a->record.monitoring, &b->record.monitoring);
    case FW_KIND_EVENT: return event_eq(&a->record.event, &b->record.event);
    default: return 0;
    }
}

static int frame_eq(const fw_frame *a, const fw_frame *b)
{
    if (a->header.device_id != b->header.device_id || a->header.sequence != b->header.sequence ||
        a->header.timestamp_ms != b->header.timestamp_ms || a->kind != b->kind) {
        return 0;
    }
    switch (a->kind) {
    case FW_KIND_POSITION: return position_eq(&a->body.position, &b->body.position);
    case FW_KIND_MONITORING: return monitoring_eq(&a->body.monitoring, &b->body.monitoring);
    case FW_KIND_EVENT: return event_eq(&a->body.event, &b->body.event);
    case FW_KIND_HELLO:
        return str_eq(a->body.hello.firmware, b->body.hello.firmware) &&
               str_eq(a->body.hello.model, b->body.hello.model) &&
               a->body.hello.capabilities == b->body.hello.capabilities;
    case FW_KIND_BATCH: {
        fw_sample_iter ia, ib;
        fw_sample sa, sb;
        if (a->body.batch.sample_count != b->body.batch.sample_count ||
            fw_samples_begin(&a->body.batch, &ia) != FW_OK ||
            fw_samples_begin(&b->body.batch, &ib) != FW_OK) {
            return 0;
        }
        for (;;) {
            fw_result x = fw_samples_next(&ia, &sa), y = fw_samples_next(&ib, &sb);
            if (x != y) {
                return 0;
            }
            if (x == FW_END) {
                return 1;
            }
            if (x != FW_OK || !sample_eq(&sa, &sb)) {
                return 0;
            }
        }
    }
    default: return 0;
    }
}

/* Encodes f with the device helper (id and sequence from f). */
static fw_result device_encode(const fw_frame *f, const fw_key *key, uint8_t *buf, size_t cap,
                               size_t *len, uint32_t *next)
{
    fw_device d;
    fw_result r = fw_device_init(&d, f->header.device_id, f->header.sequence, key);
    if (r != FW_OK) {
        return r;
    }
    switch (f->kind) {
    case FW_KIND_POSITION:
        r = fw_device_position(&d, buf, cap, len, f->header.timestamp_ms, &f->body.position);
        break;
    case FW_KIND_MONITORING:
        r = fw_device_monitoring(&d, buf, cap, len, f->header.timestamp_ms, &f->body.monitoring);
        break;
    case FW_KIND_EVENT:
        r = fw_device_event(&d, buf, cap, len, f->header.timestamp_ms, &f->body.event);
        break;
    case FW_KIND_HELLO:
        r = fw_device_hello(&d, buf, cap, len, f->header.timestamp_ms, &f->body.hello);
        break;
    default:
        r = fw_device_batch(&d, buf, cap, len, f->header.timestamp_ms, &f->body.batch);
        break;
    }
    *next = d.next_sequence;
    return r;
}

static void test_valid_vectors(void)
{
    size_t i;
    for (i = 0; i < VALID_COUNT; i++) {
        const struct valid_vector *v = &valid_vectors[i];
        fw_key key = {v->key, v->key_len};
        const fw_key *kp = v->key != NULL ? &key : NULL;
        fw_frame got;
        uint8_t buf[FW_MAX_FRAME_LEN];
        size_t len = 0;
        fw_result r = fw_decode(v->bytes, v->len, &got);
        CHECK(r == FW_OK, "%s: decode: %s", v->name, fw_result_str(r));
        if (r != FW_OK) {
            continue;
        }
        CHECK(frame_eq(&got, &v->frame), "%s: decoded fields differ", v->name);
        CHECK((got.tag != NULL) == v->auth, "%s: tag present %d", v->name, got.tag != NULL);
#ifdef FW_NO_HMAC
        /* Built without HMAC: a tag is decoded but neither made nor checked. */
        CHECK(fw_frame_verify(&got, &key) == FW_ERR_UNSUPPORTED, "%s: verify", v->name);
        if (v->auth) {
            r = fw_encode(buf, sizeof buf, &len, &v->frame, kp);
            CHECK(r == FW_ERR_UNSUPPORTED, "%s: sign: %s", v->name, fw_result_str(r));
            continue;
        }
#else
        if (v->auth) {
            uint8_t wrong[64];
            fw_key wk;
            r = fw_frame_verify(&got, &key);
            CHECK(r == FW_OK, "%s: verify: %s", v->name, fw_result_str(r));
            memcpy(wrong, v->key, v->key_len);
            wrong[0] ^= 1u;
            wk.bytes = wrong;
            wk.len = v->key_len;
            r = fw_frame_verify(&got, &wk);
            CHECK(r == FW_ERR_BAD_AUTH_TAG, "%s: wrong key: %s", v->name, fw_result_str(r));
        } else {
            CHECK(fw_frame_verify(&got, &key) == FW_ERR_INVALID_ARGUMENT,
                  "%s: verify without tag", v->name);
        }
#endif
        if (!v->canonical) {
            /* Not what an encoder writes: decoding it and encoding again
             * gives the shortest form, one byte shorter. */
            r = fw_encode(buf, sizeof buf, &len, &got, kp);
            CHECK(r == FW_OK && len < v->len, "%s: re-encode %s, %zu bytes", v->name,
                  fw_result_str(r), len);
            continue;
        }
        /* The expected frame, encoded: byte for byte the vector. */
        memset(buf, 0xAA, sizeof buf);
        r = fw_encode(buf, sizeof buf, &len, &v->frame, kp);
        CHECK(r == FW_OK && len == v->len && memcmp(buf, v->bytes, len) == 0,
              "%s: encode: %s, %zu bytes", v->name, fw_result_str(r), len);
        /* The decoded frame (lists read back from the datagram), encoded. */
        memset(buf, 0x55, sizeof buf);
        r = fw_encode(buf, sizeof buf, &len, &got, kp);
        CHECK(r == FW_OK && len == v->len && memcmp(buf, v->bytes, len) == 0,
              "%s: re-encode decoded: %s", v->name, fw_result_str(r));
        /* Exactly the frame's length is enough; one byte less is not. */
        r = fw_encode(buf, v->len, &len, &v->frame, kp);
        CHECK(r == FW_OK && len == v->len, "%s: exact buffer: %s", v->name, fw_result_str(r));
        r = fw_encode(buf, v->len - 1, &len, &v->frame, kp);
        CHECK(r == FW_ERR_BUFFER_TOO_SMALL && len == v->len, "%s: short buffer: %s %zu", v->name,
              fw_result_str(r), len);
        r = fw_encode(NULL, 0, &len, &v->frame, kp);
        CHECK(r == FW_ERR_BUFFER_TOO_SMALL && len == v->len, "%s: length query: %s %zu", v->name,
              fw_result_str(r), len);
        /* The sequence helper writes the same bytes and moves on by one. */
        {
            uint32_t next = 0;
            memset(buf, 0, sizeof buf);
            r = device_encode(&v->frame, kp, buf, sizeof buf, &len, &next);
            CHECK(r == FW_OK && len == v->len && memcmp(buf, v->bytes, len) == 0 &&
                      next == (uint32_t)(v->frame.header.sequence + 1u),
                  "%s: device helper: %s", v->name, fw_result_str(r));
        }
    }
}

static void test_invalid_vectors(void)
{
    size_t i;
    for (i = 0; i < INVALID_COUNT; i++) {
        const struct invalid_vector *v = &invalid_vectors[i];
        fw_frame got;
        fw_result r = fw_decode(v->bytes, v->len, &got);
        if (r == FW_OK && v->key != NULL) {
            fw_key key;
            key.bytes = v->key;
            key.len = v->key_len;
            r = fw_frame_verify(&got, &key);
        }
#ifdef FW_NO_HMAC
        if (strcmp(v->error, "bad_auth_tag") == 0) {
            CHECK(r == FW_ERR_UNSUPPORTED, "%s: got %s", v->name, fw_result_str(r));
            continue;
        }
#endif
        CHECK(strcmp(fw_result_str(r), v->error) == 0, "%s: got %s, want %s", v->name,
              fw_result_str(r), v->error);
    }
}

/* ------------------------------------------------------------------------
 * What the vectors do not show.
 */
static const fw_header H = {42u, 7u, 1764000000000ULL};

static fw_position munich(void)
{
    fw_position p;
    p.lat_e7 = 481372000;
    p.lon_e7 = 115755000;
    p.alt_dm = 5190;
    p.speed_cm_s = 1389;
    p.heading_ddeg = 2705;
    p.hacc_cm = 250;
    p.fix = FW_FIX_3D;
    p.satellites = 11;
    return p;
}

static fw_result enc_pos(const fw_position *p)
{
    uint8_t buf[64];
    size_t len;
    return fw_encode_position(buf, sizeof buf, &len, &H, p, NULL);
}

static void test_encoder_refusals(void)
{
    uint8_t buf[FW_MAX_FRAME_LEN + 100];
    size_t len;
    fw_position p = munich();
    fw_header h0 = H;
    fw_monitoring m;
    fw_reading rs[33];
    fw_event e;
    fw_hello hello;
    fw_batch b;
    fw_sample samples[129];
    size_t i;
    static const char names[33][4] = {"a00", "a01", "a02", "a03", "a04", "a05", "a06", "a07",
                                      "a08", "a09", "a10", "a11", "a12", "a13", "a14", "a15",
                                      "a16", "a17", "a18", "a19", "a20", "a21", "a22", "a23",
                                      "a24", "a25", "a26", "a27", "a28", "a29", "a30", "a31",
                                      "a32"};
    double zero = 0.0;

    CHECK(enc_pos(&p) == FW_OK, "munich");
    h0.device_id = 0;
    CHECK(fw_encode_position(buf, sizeof buf, &len, &h0, &p, NULL) == FW_ERR_BAD_DEVICE_ID,
          "device 0");
    p.lat_e7 = 900000001;
    CHECK(enc_pos(&p) == FW_ERR_OUT_OF_RANGE, "lat");
    p = munich();
    p.lat_e7 = -900000000;
    CHECK(enc_pos(&p) == FW_OK, "lat min");
    p = munich();
    p.lon_e7 = -1800000001;
    CHECK(enc_pos(&p) == FW_ERR_OUT_OF_RANGE, "lon");
    p = munich();
    p.alt_dm = 1000001;
    CHECK(enc_pos(&p) == FW_ERR_OUT_OF_RANGE, "alt");
    p = munich();
    p.heading_ddeg = 3600;
    CHECK(enc_pos(&p) == FW_ERR_OUT_OF_RANGE, "heading");
    p = munich();
    p.fix = 6;
    CHECK(enc_pos(&p) == FW_ERR_OUT_OF_RANGE, "fix");

    memset(&m, 0, sizeof m);
    for (i = 0; i < 33; i++) {
        rs[i].name.ptr = names[i];
        rs[i].name.len = 3;
        rs[i].value = (double)i;
    }
    m.readings = rs;
    m.reading_count = 32;
    m.present = FW_HAS_BATTERY;
    m.battery_pct = 100;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_OK, "32 readings");
    m.reading_count = 33;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_TOO_MANY_ITEMS,
          "33 readings");
    m.reading_count = 2;
    m.battery_pct = 101;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_OUT_OF_RANGE,
          "battery");
    m.present = 0; /* an absent battery is not checked */
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_OK, "no battery");
    rs[1].name = rs[0].name;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_BAD_NAME,
          "repeated name");
    rs[1].name.ptr = "1abc";
    rs[1].name.len = 4;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_BAD_NAME,
          "name starts with a digit");
    rs[1].name.ptr = "a b";
    rs[1].name.len = 3;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_BAD_NAME,
          "name with a space");
    rs[1].name.len = 0;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_BAD_NAME,
          "empty name");
    rs[1].name.ptr = "_23456789012345678901234567890123";
    rs[1].name.len = 33;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_BAD_NAME,
          "33-byte name");
    rs[1].name.len = 32;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_OK, "32-byte name");
    rs[1].value = zero / zero;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_OUT_OF_RANGE,
          "NaN");
    rs[1].value = 1.0 / zero;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_OUT_OF_RANGE,
          "infinity");
    m.readings = NULL;
    CHECK(fw_encode_monitoring(buf, sizeof buf, &len, &H, &m, NULL) == FW_ERR_INVALID_ARGUMENT,
          "readings NULL");

    memset(&e, 0, sizeof e);
    e.code = 1001;
    e.severity = 5;
    CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_ERR_OUT_OF_RANGE,
          "severity");
    e.severity = 4;
    e.text.ptr = "\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4"
                 "\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4"
                 "\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4"
                 "\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4x";
    e.text.len = 64;
    CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_OK, "64-byte text");
    e.text.len = 65;
    CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_ERR_OUT_OF_RANGE,
          "65-byte text");
    e.text.len = 63; /* cuts a two-byte character */
    CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_ERR_MALFORMED_PAYLOAD,
          "text not UTF-8");
    e.text.ptr = ""; /* 21 header + 2 code 1001 + 1 severity + 1 tag + 1 length + 4 CRC */
    e.text.len = 0;
    CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_OK && len == 30,
          "empty text is present: %zu", len);
    e.text.ptr = NULL;
    CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_OK && len == 29,
          "no text: %zu", len);
    {
        /* Surrogates, overlong forms and code points above U+10FFFF. */
        static const char *bad[] = {"\xed\xa0\x80", "\xc0\xaf", "\xe0\x80\xaf", "\xf4\x90\x80\x80",
                                    "\xf5\x80\x80\x80", "\x80", "\xe2\x82"};
        static const char *good[] = {"\xed\x9f\xbf", "\xf4\x8f\xbf\xbf", "\xf0\x90\x80\x80",
                                     "\xe0\xa0\x80", "\xc2\x80", "\x7f"};
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            e.text.ptr = bad[i];
            e.text.len = strlen(bad[i]);
            CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_ERR_MALFORMED_PAYLOAD,
                  "bad UTF-8 #%zu", i);
        }
        for (i = 0; i < sizeof good / sizeof good[0]; i++) {
            fw_frame f;
            e.text.ptr = good[i];
            e.text.len = strlen(good[i]);
            CHECK(fw_encode_event(buf, sizeof buf, &len, &H, &e, NULL) == FW_OK &&
                      fw_decode(buf, len, &f) == FW_OK,
                  "good UTF-8 #%zu", i);
        }
    }

    memset(&hello, 0, sizeof hello);
    hello.firmware.ptr = "123456789012345678901234567890123";
    hello.firmware.len = 32;
    CHECK(fw_encode_hello(buf, sizeof buf, &len, &H, &hello, NULL) == FW_OK, "32-byte firmware");
    hello.firmware.len = 33;
    CHECK(fw_encode_hello(buf, sizeof buf, &len, &H, &hello, NULL) == FW_ERR_OUT_OF_RANGE,
          "33-byte firmware");
    hello.firmware.len = 0;
    hello.model.ptr = "123456789012345678901234567890123";
    hello.model.len = 33;
    CHECK(fw_encode_hello(buf, sizeof buf, &len, &H, &hello, NULL) == FW_ERR_OUT_OF_RANGE,
          "33-byte model");

    memset(&b, 0, sizeof b);
    memset(samples, 0, sizeof samples);
    for (i = 0; i < 129; i++) {
        samples[i].kind = FW_KIND_EVENT;
        samples[i].offset_ms = (uint32_t)i;
    }
    b.samples = samples;
    CHECK(fw_encode_batch(buf, sizeof buf, &len, &H, &b, NULL) == FW_ERR_BAD_BATCH, "empty batch");
    b.sample_count = 129;
    CHECK(fw_encode_batch(buf, sizeof buf, &len, &H, &b, NULL) == FW_ERR_TOO_MANY_ITEMS,
          "129 samples");
    b.sample_count = 128;
    CHECK(fw_encode_batch(buf, sizeof buf, &len, &H, &b, NULL) == FW_OK, "128 samples");
    samples[5].kind = FW_KIND_HELLO;
    CHECK(fw_encode_batch(buf, sizeof buf, &len, &H, &b, NULL) == FW_ERR_BAD_BATCH,
          "hello in batch");
    samples[5].kind = 9;
    CHECK(fw_encode_batch(buf, sizeof buf, &len, &H, &b, NULL) == FW_ERR_UNKNOWN_KIND,
          "unknown sample kind");
    /* 128 monitoring samples of 4 readings: far beyond 1200 bytes. */
    for (i = 0; i < 128; i++) {
        samples[i].kind = FW_KIND_MONITORING;
        samples[i].record.monitoring.readings = rs + 2;
        samples[i].record.monitoring.reading_count = 4;
    }
    CHECK(fw_encode_batch(buf, sizeof buf, &len, &H, &b, NULL) == FW_ERR_TOO_LONG && len > 1200,
          "too long: %zu", len);
    CHECK(fw_encode_batch(buf, 100, &len, &H, &b, NULL) == FW_ERR_TOO_LONG, "too long, small buf");

    CHECK(fw_encode_position(buf, sizeof buf, NULL, &H, &p, NULL) == FW_ERR_INVALID_ARGUMENT,
          "NULL out_len");
    CHECK(fw_encode_position(NULL, 10, &len, &H, &p, NULL) == FW_ERR_INVALID_ARGUMENT,
          "NULL buffer");
    CHECK(fw_encode_position(buf, sizeof buf, &len, NULL, &p, NULL) == FW_ERR_INVALID_ARGUMENT,
          "NULL header");
    {
        fw_frame f;
        memset(&f, 0, sizeof f);
        f.header = H;
        f.kind = 6;
        CHECK(fw_encode(buf, sizeof buf, &len, &f, NULL) == FW_ERR_UNKNOWN_KIND, "kind 6");
    }
}

static void test_sizes_and_signing(void)
{
    uint8_t buf[FW_MAX_FRAME_LEN];
    size_t len;
    fw_position p = munich();
    static const uint8_t kb[3] = {'k', 'e', 'y'};
    fw_key key = {kb, 3};
    fw_result r;
    /* The largest Position is 48 bytes, 64 signed; the smallest 33. */
    p.lat_e7 = -900000000;
    p.lon_e7 = -1800000000;
    p.alt_dm = -1000000;
    p.speed_cm_s = 65535;
    p.heading_ddeg = 3599;
    p.hacc_cm = 65535;
    CHECK(fw_encode_position(buf, sizeof buf, &len, &H, &p, NULL) == FW_OK &&
              len == FW_MAX_POSITION_FRAME_LEN,
          "largest position %zu", len);
    r = fw_encode_position(buf, sizeof buf, &len, &H, &p, &key);
#ifndef FW_NO_HMAC
    fw_frame f;
    CHECK(r == FW_OK && len == FW_MAX_POSITION_FRAME_LEN + FW_TAG_LEN, "signed %zu", len);
    CHECK(buf[3] == FW_FLAG_AUTH, "auth flag");
    CHECK(fw_decode(buf, len, &f) == FW_OK && f.tag == buf + 44 && f.signed_len == 44 &&
              fw_frame_verify(&f, &key) == FW_OK,
          "signed frame decodes and verifies");
    buf[30] ^= 1u; /* a changed payload with a fixed CRC: the tag no longer verifies */
    {
        uint32_t crc;
        fw_crc32c(buf, len - 4, &crc);
        buf[len - 4] = (uint8_t)crc;
        buf[len - 3] = (uint8_t)(crc >> 8);
        buf[len - 2] = (uint8_t)(crc >> 16);
        buf[len - 1] = (uint8_t)(crc >> 24);
    }
    r = fw_decode(buf, len, &f);
    CHECK(r == FW_OK && fw_frame_verify(&f, &key) == FW_ERR_BAD_AUTH_TAG, "tampered: %s",
          fw_result_str(r));
#else
    CHECK(r == FW_ERR_UNSUPPORTED, "signing without HMAC: %s", fw_result_str(r));
#endif
    memset(&p, 0, sizeof p);
    CHECK(fw_encode_position(buf, sizeof buf, &len, &H, &p, NULL) == FW_OK && len == 33,
          "smallest position %zu", len);
}

static void test_device_helper(void)
{
    fw_device d;
    uint8_t buf[64];
    size_t len;
    fw_position p = munich();
    fw_frame f;
    uint8_t due;
    uint32_t value;
    fw_position bad = munich();
    CHECK(fw_device_init(&d, 0, 0, NULL) == FW_ERR_BAD_DEVICE_ID, "device 0");
    CHECK(fw_device_init(&d, 9, 0xFFFFFFFEu, NULL) == FW_OK, "init");
    CHECK(fw_device_position(&d, buf, sizeof buf, &len, 5, &p) == FW_OK &&
              fw_decode(buf, len, &f) == FW_OK && f.header.sequence == 0xFFFFFFFEu &&
              f.header.device_id == 9 && f.header.timestamp_ms == 5,
          "first");
    CHECK(fw_device_position(&d, buf, sizeof buf, &len, 6, &p) == FW_OK &&
              fw_decode(buf, len, &f) == FW_OK && f.header.sequence == 0xFFFFFFFFu,
          "second");
    bad.heading_ddeg = 4000;
    CHECK(fw_device_position(&d, buf, sizeof buf, &len, 7, &bad) == FW_ERR_OUT_OF_RANGE &&
              d.next_sequence == 0,
          "a refused frame spends no number");
    CHECK(fw_device_position(&d, buf, 10, &len, 7, &p) == FW_ERR_BUFFER_TOO_SMALL &&
              d.next_sequence == 0,
          "nor one that did not fit");
    CHECK(fw_device_save_due(&d, &due, &value) == FW_OK && due == 1 && value == 0, "save at 0");
    CHECK(fw_device_position(&d, buf, sizeof buf, &len, 8, &p) == FW_OK &&
              fw_decode(buf, len, &f) == FW_OK && f.header.sequence == 0,
          "wraps to 0");
    CHECK(fw_device_save_due(&d, &due, &value) == FW_OK && due == 0, "no save at 1");
    CHECK(fw_device_resume(&d, 9, 65536u * 3u, NULL) == FW_OK &&
              d.next_sequence == 65536u * 3u + 131072u,
          "resume");
    CHECK(fw_device_save_due(&d, &due, &value) == FW_OK && due == 1 && value == 65536u * 5u,
          "save after resume");
    CHECK(fw_device_resume(&d, 9, 0xFFFF0000u, NULL) == FW_OK && d.next_sequence == 0x10000u,
          "resume wraps");
}

static void test_result_labels(void)
{
    int i;
    static const char *labels[] = {"ok", "too_short", "too_long", "bad_magic",
                                   "unsupported_version", "bad_checksum", "unknown_flags",
                                   "unknown_kind", "bad_device_id", "malformed_payload",
                                   "trailing_bytes", "out_of_range", "too_many_items", "bad_name",
                                   "bad_batch", "bad_auth_tag", "buffer_too_small",
                                   "invalid_argument", "unsupported", "end"};
    for (i = 0; i <= (int)FW_END; i++) {
        CHECK(strcmp(fw_result_str((fw_result)i), labels[i]) == 0, "label %d", i);
    }
}

/* Published test vectors: CRC-32C check value (PROTOCOL.md 5), SHA-256
 * (FIPS 180-2 appendix B), HMAC-SHA-256 (RFC 4231 cases 1, 2, 3, 6). */
#ifndef FW_NO_HMAC
static int hex_eq(const uint8_t *got, size_t n, const char *hex)
{
    size_t i;
    char s[3];
    for (i = 0; i < n; i++) {
        sprintf(s, "%02x", got[i]);
        if (s[0] != hex[2 * i] || s[1] != hex[2 * i + 1]) {
            return 0;
        }
    }
    return hex[2 * n] == '\0';
}
#endif

static void test_primitives(void)
{
    uint32_t crc = 0;
    uint8_t out[32];
    uint8_t key[131];
    uint8_t data[50];
    CHECK(fw_crc32c((const uint8_t *)"123456789", 9, &crc) == FW_OK && crc == 0xE3069283u,
          "crc check value %08x", (unsigned)crc);
    CHECK(fw_crc32c(NULL, 0, &crc) == FW_OK && crc == 0, "crc of nothing");
#ifndef FW_NO_HMAC
    fw_sha256((const uint8_t *)"abc", 3, out);
    CHECK(hex_eq(out, 32, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
          "sha256 abc");
    fw_sha256(NULL, 0, out);
    CHECK(hex_eq(out, 32, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
          "sha256 empty");
    fw_sha256((const uint8_t *)"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, out);
    CHECK(hex_eq(out, 32, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
          "sha256 two blocks");
    memset(key, 0x0b, 20);
    fw_hmac_sha256(key, 20, (const uint8_t *)"Hi There", 8, out);
    CHECK(hex_eq(out, 32, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
          "rfc4231 case 1");
    fw_hmac_sha256((const uint8_t *)"Jefe", 4, (const uint8_t *)"what do ya want for nothing?", 28,
                   out);
    CHECK(hex_eq(out, 32, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
          "rfc4231 case 2");
    memset(key, 0xaa, sizeof key);
    memset(data, 0xdd, sizeof data);
    fw_hmac_sha256(key, 20, data, 50, out);
    CHECK(hex_eq(out, 32, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
          "rfc4231 case 3");
    fw_hmac_sha256(key, 131,
                   (const uint8_t *)"Test Using Larger Than Block-Size Key - Hash Key First", 54,
                   out);
    CHECK(hex_eq(out, 32, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
          "rfc4231 case 6");
#else
    CHECK(fw_sha256((const uint8_t *)"abc", 3, out) == FW_ERR_UNSUPPORTED, "no sha256");
    (void)key;
    (void)data;
#endif
}

int main(void)
{
    test_valid_vectors();
    test_invalid_vectors();
    test_encoder_refusals();
    test_sizes_and_signing();
    test_device_helper();
    test_result_labels();
    test_primitives();
    printf("golden vectors: %d valid, %d invalid\n", VALID_COUNT, INVALID_COUNT);
    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
