/*
 * Test harness for the differential test of tests/sdk_c.rs: the C side of
 * "the C library and the Rust crate agree".
 *
 *   harness gen SEED COUNT
 *       COUNT random frames from the C encoder, one a line:
 *           <hex> <key hex or -> <description>
 *       Every frame is also decoded again by the C decoder, which must give
 *       back the same description (else exit 2).
 *   harness decode
 *       Reads lines "<hex> <key hex or ->" from stdin and answers each with
 *       "ok <description>" or "err <label>" (the key, when given, verifies
 *       the tag of a frame that has one).
 *   harness labels
 *       Every result code and its label, "<code> <label>" a line.
 *
 * A description is the frame in wire values, one token per field:
 *   <device> <sequence> <timestamp> <auth 0|1> <body>
 *   P lat lon alt speed heading hacc fix satellites
 *   M battery supply temperature rssi uptime count {name_hex=value_bits_hex}
 *   E code severity {t:text_hex | -}
 *   H f:firmware_hex m:model_hex capabilities
 *   B count {@offset <P|M|E record>}
 * with "-" for an absent optional field. tests/sdk_c.rs writes the same for
 * the frames fleetwire_proto::decode returns.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleetwire.h"

/* ------------------------------------------------------------------------
 * Descriptions
 */
typedef struct out {
    char *p;
    size_t len, cap;
} out;

static void emit(out *o, const char *s)
{
    size_t n = strlen(s);
    if (o->len + n + 1 > o->cap) {
        fprintf(stderr, "harness: description too long\n");
        exit(3);
    }
    memcpy(o->p + o->len, s, n + 1);
    o->len += n;
}

static void emitf_u(out *o, const char *fmt, unsigned long long v)
{
    char tmp[64];
    snprintf(tmp, sizeof tmp, fmt, v);
    emit(o, tmp);
}

static void emitf_i(out *o, const char *fmt, long long v)
{
    char tmp[64];
    snprintf(tmp, sizeof tmp, fmt, v);
    emit(o, tmp);
}

static const char hexdigits[] = "0123456789abcdef";

static void emit_hex(out *o, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    if (o->len + 2 * n + 1 > o->cap) {
        fprintf(stderr, "harness: description too long\n");
        exit(3);
    }
    for (i = 0; i < n; i++) {
        o->p[o->len++] = hexdigits[b[i] >> 4];
        o->p[o->len++] = hexdigits[b[i] & 15];
    }
    o->p[o->len] = '\0';
}

static void print_hex(const uint8_t *b, size_t n)
{
    static char line[2 * 4096 + 1];
    size_t i;
    for (i = 0; i < n && i < 4096; i++) {
        line[2 * i] = hexdigits[b[i] >> 4];
        line[2 * i + 1] = hexdigits[b[i] & 15];
    }
    line[2 * i] = '\0';
    fputs(line, stdout);
}

static void describe_position(out *o, const fw_position *p)
{
    emitf_i(o, "P %lld", p->lat_e7);
    emitf_i(o, " %lld", p->lon_e7);
    emitf_i(o, " %lld", p->alt_dm);
    emitf_u(o, " %llu", p->speed_cm_s);
    emitf_u(o, " %llu", p->heading_ddeg);
    emitf_u(o, " %llu", p->hacc_cm);
    emitf_u(o, " %llu", p->fix);
    emitf_u(o, " %llu", p->satellites);
}

static int describe_monitoring(out *o, const fw_monitoring *m)
{
    fw_reading_iter it;
    fw_reading r;
    fw_result res;
    emit(o, "M");
    if (m->present & FW_HAS_BATTERY) emitf_u(o, " %llu", m->battery_pct); else emit(o, " -");
    if (m->present & FW_HAS_SUPPLY) emitf_u(o, " %llu", m->supply_mv); else emit(o, " -");
    if (m->present & FW_HAS_TEMPERATURE) emitf_i(o, " %lld", m->temperature_cdeg); else emit(o, " -");
    if (m->present & FW_HAS_RSSI) emitf_i(o, " %lld", m->rssi_dbm); else emit(o, " -");
    if (m->present & FW_HAS_UPTIME) emitf_u(o, " %llu", m->uptime_s); else emit(o, " -");
    emitf_u(o, " %llu", m->reading_count);
    if (fw_readings_begin(m, &it) != FW_OK) {
        return 0;
    }
    while ((res = fw_readings_next(&it, &r)) == FW_OK) {
        unsigned long long bits;
        memcpy(&bits, &r.value, sizeof bits);
        emit(o, " ");
        emit_hex(o, r.name.ptr, r.name.len);
        emitf_u(o, "=%016llx", bits);
    }
    return res == FW_END;
}

static void describe_event(out *o, const fw_event *e)
{
    emitf_u(o, "E %llu", e->code);
    emitf_u(o, " %llu", e->severity);
    if (e->text.ptr != NULL) {
        emit(o, " t:");
        emit_hex(o, e->text.ptr, e->text.len);
    } else {
        emit(o, " -");
    }
}

static int describe(out *o, const fw_frame *f, int auth)
{
    o->len = 0;
    o->p[0] = '\0';
    emitf_u(o, "%llu", f->header.device_id);
    emitf_u(o, " %llu", f->header.sequence);
    emitf_u(o, " %llu", (unsigned long long)f->header.timestamp_ms);
    emitf_u(o, " %llu ", (unsigned long long)auth);
    switch (f->kind) {
    case FW_KIND_POSITION: describe_position(o, &f->body.position); return 1;
    case FW_KIND_MONITORING: return describe_monitoring(o, &f->body.monitoring);
    case FW_KIND_EVENT: describe_event(o, &f->body.event); return 1;
    case FW_KIND_HELLO:
        emit(o, "H f:");
        emit_hex(o, f->body.hello.firmware.ptr, f->body.hello.firmware.len);
        emit(o, " m:");
        emit_hex(o, f->body.hello.model.ptr, f->body.hello.model.len);
        emitf_u(o, " %llu", f->body.hello.capabilities);
        return 1;
    case FW_KIND_BATCH: {
        fw_sample_iter it;
        fw_sample s;
        fw_result res;
        emitf_u(o, "B %llu", f->body.batch.sample_count);
        if (fw_samples_begin(&f->body.batch, &it) != FW_OK) {
            return 0;
        }
        while ((res = fw_samples_next(&it, &s)) == FW_OK) {
            emitf_u(o, " @%llu ", s.offset_ms);
            switch (s.kind) {
            case FW_KIND_POSITION: describe_position(o, &s.record.position); break;
            case FW_KIND_MONITORING:
                if (!describe_monitoring(o, &s.record.monitoring)) {
                    return 0;
                }
                break;
            case FW_KIND_EVENT: describe_event(o, &s.record.event); break;
            default: return 0;
            }
        }
        return res == FW_END;
    }
    default: return 0;
    }
}

/* ------------------------------------------------------------------------
 * Random frames (splitmix64), biased to the edges of every field
 */
static unsigned long long rng_state;

static unsigned long long rnd(void)
{
    unsigned long long z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* 0 .. n-1 */
static unsigned long long below(unsigned long long n)
{
    return rnd() % n;
}

/* A value of 0 .. max with a random number of significant bits, or an edge
 * of the varint encoding. */
static unsigned long long rnd_uint(unsigned long long max)
{
    static const unsigned long long edges[] = {0, 1, 127, 128, 16383, 16384, 2097151, 2097152,
                                               268435455, 268435456};
    unsigned long long v;
    unsigned bits;
    switch (below(4)) {
    case 0:
        v = edges[below(sizeof edges / sizeof edges[0])];
        return v > max ? max : v;
    case 1: return below(3) == 0 ? max : max - below(3) % (max + 1);
    default:
        bits = (unsigned)below(64) + 1;
        v = bits >= 64 ? rnd() : rnd() & ((1ULL << bits) - 1);
        return v > max ? v % (max + 1) : v;
    }
}

/* A value of -lim .. lim. */
static long long rnd_int(long long lim)
{
    long long v = (long long)rnd_uint((unsigned long long)lim);
    return below(2) ? -v : v;
}

static const char name_first[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_";
static const char name_rest[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789.-";

/* Text pool: every string of a frame points in here. */
static char pool[64 * 1024];
static size_t pool_used;

static char *pool_take(size_t n)
{
    char *p;
    if (pool_used + n > sizeof pool) {
        fprintf(stderr, "harness: text pool full\n");
        exit(3);
    }
    p = pool + pool_used;
    pool_used += n;
    return p;
}

/* Random well-formed UTF-8 of at most max bytes. */
static fw_str rnd_text(size_t max)
{
    fw_str s;
    size_t target = below(4) == 0 ? max : (size_t)below(max + 1), n = 0;
    char *p = pool_take(max + 4);
    while (n < target) {
        unsigned long long kind = below(8);
        unsigned long cp;
        if (kind < 4 || target - n < 2) {
            p[n++] = (char)(0x20 + below(0x5F));
        } else if (kind < 6 || target - n < 3) {
            cp = 0x80 + (unsigned long)below(0x800 - 0x80);
            p[n++] = (char)(0xC0 | (cp >> 6));
            p[n++] = (char)(0x80 | (cp & 0x3F));
        } else if (kind < 7 || target - n < 4) {
            do {
                cp = 0x800 + (unsigned long)below(0x10000 - 0x800);
            } while (cp >= 0xD800 && cp <= 0xDFFF);
            p[n++] = (char)(0xE0 | (cp >> 12));
            p[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            p[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
            cp = 0x10000 + (unsigned long)below(0x110000 - 0x10000);
            p[n++] = (char)(0xF0 | (cp >> 18));
            p[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            p[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            p[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    s.ptr = p;
    s.len = n;
    return s;
}

static double rnd_double(void)
{
    static const unsigned long long edges[] = {
        0x0000000000000000ULL, 0x8000000000000000ULL, 0x7FEFFFFFFFFFFFFFULL, 0xFFEFFFFFFFFFFFFFULL,
        0x0000000000000001ULL, 0x8000000000000001ULL, 0x3FF0000000000000ULL, 0x0010000000000000ULL};
    unsigned long long bits;
    double d;
    if (below(4) == 0) {
        bits = edges[below(sizeof edges / sizeof edges[0])];
    } else {
        do {
            bits = rnd();
        } while (((bits >> 52) & 0x7FF) == 0x7FF);
    }
    memcpy(&d, &bits, sizeof d);
    return d;
}

static void rnd_position(fw_position *p)
{
    p->lat_e7 = (int32_t)rnd_int(FW_LAT_MAX);
    p->lon_e7 = (int32_t)rnd_int(FW_LON_MAX);
    p->alt_dm = (int32_t)rnd_int(FW_ALT_MAX);
    p->speed_cm_s = (uint16_t)rnd_uint(65535);
    p->heading_ddeg = (uint16_t)rnd_uint(FW_HEADING_MAX);
    p->hacc_cm = (uint16_t)rnd_uint(65535);
    p->fix = (uint8_t)below(6);
    p->satellites = (uint8_t)rnd_uint(255);
}

static fw_reading reading_pool[4096];
static size_t readings_used;

static void rnd_monitoring(fw_monitoring *m, size_t max_readings)
{
    size_t i, j, n = (size_t)below(max_readings + 1);
    fw_reading *rs;
    memset(m, 0, sizeof *m);
    m->present = (uint8_t)below(32);
    m->battery_pct = (uint8_t)rnd_uint(100);
    m->supply_mv = (uint16_t)rnd_uint(65535);
    m->temperature_cdeg = (int16_t)(rnd_int(32767) - (long long)below(2));
    m->rssi_dbm = (int8_t)(rnd_int(127) - (long long)below(2));
    m->uptime_s = (uint32_t)rnd_uint(0xFFFFFFFFULL);
    if (readings_used + n > sizeof reading_pool / sizeof reading_pool[0]) {
        fprintf(stderr, "harness: reading pool full\n");
        exit(3);
    }
    rs = reading_pool + readings_used;
    readings_used += n;
    for (i = 0; i < n; i++) {
        size_t len;
        char *name;
        int dup;
        do {
            len = below(4) == 0 ? FW_MAX_NAME_LEN : 1 + (size_t)below(12);
            name = pool_take(len);
            name[0] = name_first[below(sizeof name_first - 1)];
            for (j = 1; j < len; j++) {
                name[j] = name_rest[below(sizeof name_rest - 1)];
            }
            dup = 0;
            for (j = 0; j < i; j++) {
                if (rs[j].name.len == len && memcmp(rs[j].name.ptr, name, len) == 0) {
                    dup = 1;
                }
            }
        } while (dup);
        rs[i].name.ptr = name;
        rs[i].name.len = len;
        rs[i].value = rnd_double();
    }
    m->readings = rs;
    m->reading_count = n;
}

static void rnd_event(fw_event *e)
{
    e->code = (uint16_t)rnd_uint(65535);
    e->severity = (uint8_t)below(5);
    if (below(3) == 0) {
        e->text.ptr = NULL;
        e->text.len = 0;
    } else {
        e->text = rnd_text(FW_MAX_EVENT_TEXT_LEN);
    }
}

static fw_sample sample_pool[FW_MAX_BATCH_SAMPLES];

static void rnd_frame(fw_frame *f)
{
    static const unsigned long long ts_edges[] = {0, 1, 1764000000000ULL, 0xFFFFFFFFFFFFFFFFULL};
    memset(f, 0, sizeof *f);
    pool_used = 0;
    readings_used = 0;
    f->header.device_id = (uint32_t)(1 + rnd_uint(0xFFFFFFFEULL));
    f->header.sequence = (uint32_t)rnd_uint(0xFFFFFFFFULL);
    f->header.timestamp_ms = below(3) == 0 ? ts_edges[below(4)] : rnd();
    f->kind = (uint8_t)(1 + below(5));
    switch (f->kind) {
    case FW_KIND_POSITION: rnd_position(&f->body.position); break;
    case FW_KIND_MONITORING: rnd_monitoring(&f->body.monitoring, FW_MAX_READINGS); break;
    case FW_KIND_EVENT: rnd_event(&f->body.event); break;
    case FW_KIND_HELLO:
        f->body.hello.firmware = rnd_text(FW_MAX_HELLO_TEXT_LEN);
        f->body.hello.model = rnd_text(FW_MAX_HELLO_TEXT_LEN);
        f->body.hello.capabilities = (uint32_t)rnd_uint(0xFFFFFFFFULL);
        break;
    default: {
        size_t i, n = below(4) == 0 ? FW_MAX_BATCH_SAMPLES : 1 + (size_t)below(8);
        for (i = 0; i < n; i++) {
            fw_sample *s = &sample_pool[i];
            memset(s, 0, sizeof *s);
            s->offset_ms = (uint32_t)rnd_uint(0xFFFFFFFFULL);
            s->kind = (uint8_t)(1 + below(3));
            switch (s->kind) {
            case FW_KIND_POSITION: rnd_position(&s->record.position); break;
            case FW_KIND_MONITORING: rnd_monitoring(&s->record.monitoring, 4); break;
            default: rnd_event(&s->record.event); break;
            }
        }
        f->body.batch.samples = sample_pool;
        f->body.batch.sample_count = n;
        break;
    }
    }
}

/* Drops readings or samples of a frame that encoded to `len` > 1200 bytes:
 * in proportion first, then one at a time, until it fits. */
static int shrink(fw_frame *f, size_t len)
{
    size_t *count;
    size_t keep;
    if (f->kind == FW_KIND_MONITORING && f->body.monitoring.reading_count > 0) {
        count = &f->body.monitoring.reading_count;
        keep = 0;
    } else if (f->kind == FW_KIND_BATCH && f->body.batch.sample_count > 1) {
        count = &f->body.batch.sample_count;
        keep = 1;
    } else {
        return 0;
    }
    if (len > FW_MAX_FRAME_LEN + 64) {
        size_t n = *count * (FW_MAX_FRAME_LEN + 32) / len;
        *count = n > keep ? n : keep;
    } else {
        (*count)--;
    }
    return 1;
}

static int gen(unsigned long long seed, unsigned long long count)
{
    static uint8_t buf[FW_MAX_FRAME_LEN];
    static char d1[1 << 16], d2[1 << 16];
    out o1, o2;
    unsigned long long i;
    rng_state = seed;
    o1.p = d1;
    o1.cap = sizeof d1;
    o2.p = d2;
    o2.cap = sizeof d2;
    for (i = 0; i < count; i++) {
        fw_frame f, back;
        uint8_t keybytes[100];
        fw_key key;
        size_t len = 0, k;
        int signed_frame = below(4) == 0;
        fw_result r;
        rnd_frame(&f);
        key.len = (size_t)below(sizeof keybytes + 1);
        for (k = 0; k < key.len; k++) {
            keybytes[k] = (uint8_t)rnd();
        }
        key.bytes = keybytes;
        while ((r = fw_encode(buf, sizeof buf, &len, &f, signed_frame ? &key : NULL)) ==
                   FW_ERR_TOO_LONG &&
               shrink(&f, len)) {
        }
        if (r != FW_OK) {
            fprintf(stderr, "harness: frame %llu: encode: %s\n", i, fw_result_str(r));
            return 2;
        }
        if (!describe(&o1, &f, signed_frame)) {
            fprintf(stderr, "harness: frame %llu: cannot describe\n", i);
            return 2;
        }
        /* The C decoder reads back what the C encoder wrote. */
        r = fw_decode(buf, len, &back);
        if (r == FW_OK && signed_frame) {
            r = fw_frame_verify(&back, &key);
        }
        if (r != FW_OK || !describe(&o2, &back, back.tag != NULL) || strcmp(d1, d2) != 0) {
            fprintf(stderr, "harness: frame %llu: C round trip: %s\n  %s\n  %s\n", i,
                    fw_result_str(r), d1, d2);
            return 2;
        }
        print_hex(buf, len);
        printf(" ");
        if (signed_frame) {
            print_hex(keybytes, key.len);
            if (key.len == 0) {
                printf("=");
            }
        } else {
            printf("-");
        }
        printf(" %s\n", d1);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------
 * decode: lines "<hex> <key hex | - | =>" ("=" is the empty key)
 */
static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses hex up to a space, newline or end; returns the byte count or -1. */
static long parse_hex(const char **s, uint8_t *dst, size_t cap)
{
    const char *p = *s;
    size_t n = 0;
    while (*p && *p != ' ' && *p != '\n') {
        int hi = hexval(p[0]), lo = hi < 0 ? -1 : hexval(p[1]);
        if (hi < 0 || lo < 0 || n >= cap) {
            return -1;
        }
        dst[n++] = (uint8_t)(hi * 16 + lo);
        p += 2;
    }
    *s = p;
    return (long)n;
}

static int decode_lines(void)
{
    static char line[8192];
    static uint8_t data[4096];
    static uint8_t keybytes[512];
    static char desc[1 << 16];
    out o;
    unsigned long long n = 0;
    o.p = desc;
    o.cap = sizeof desc;
    while (fgets(line, sizeof line, stdin) != NULL) {
        const char *p = line;
        long len, klen = -1;
        fw_frame f;
        fw_result r;
        if (*p == '-' && (p[1] == ' ' || p[1] == '\n')) {
            len = 0; /* the empty datagram */
            p++;
        } else {
            len = parse_hex(&p, data, sizeof data);
        }
        if (len < 0 || *p != ' ') {
            fprintf(stderr, "harness: bad input line %llu\n", n);
            return 2;
        }
        p++;
        if (*p == '=') {
            klen = 0;
        } else if (*p != '-') {
            klen = parse_hex(&p, keybytes, sizeof keybytes);
            if (klen < 0) {
                fprintf(stderr, "harness: bad key on line %llu\n", n);
                return 2;
            }
        }
        r = fw_decode(data, (size_t)len, &f);
        if (r == FW_OK && klen >= 0 && f.tag != NULL) {
            fw_key key;
            key.bytes = keybytes;
            key.len = (size_t)klen;
            r = fw_frame_verify(&f, &key);
        }
        if (r == FW_OK) {
            if (!describe(&o, &f, f.tag != NULL)) {
                fprintf(stderr, "harness: line %llu: cannot describe a decoded frame\n", n);
                return 2;
            }
            printf("ok %s\n", desc);
        } else {
            printf("err %s\n", fw_result_str(r));
        }
        n++;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    static char outbuf[1 << 20];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    if (argc == 4 && strcmp(argv[1], "gen") == 0) {
        return gen(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
    }
    if (argc == 2 && strcmp(argv[1], "decode") == 0) {
        return decode_lines();
    }
    if (argc == 2 && strcmp(argv[1], "labels") == 0) {
        int r;
        for (r = FW_OK; r <= FW_END; r++) {
            printf("%d %s\n", r, fw_result_str((fw_result)r));
        }
        return fflush(stdout) == 0 ? 0 : 1;
    }
    fprintf(stderr, "usage: harness gen SEED COUNT | harness decode | harness labels\n");
    return 64;
}
