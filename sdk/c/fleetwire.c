/*
 * fleetwire device SDK for C99: implementation. See fleetwire.h and
 * proto/PROTOCOL.md (the section numbers below are that document's).
 */
#include "fleetwire.h"

#include <string.h>

/* Reading values are IEEE 754 binary64 on the wire; they are copied bit for
 * bit, never computed with, so no floating-point code is linked in. */
typedef char fw_double_must_be_binary64[(sizeof(double) == 8u) ? 1 : -1];

/* ========================================================================
 * Result labels
 */
const char *fw_result_str(fw_result r)
{
    switch (r) {
    case FW_OK: return "ok";
    case FW_ERR_TOO_SHORT: return "too_short";
    case FW_ERR_TOO_LONG: return "too_long";
    case FW_ERR_BAD_MAGIC: return "bad_magic";
    case FW_ERR_UNSUPPORTED_VERSION: return "unsupported_version";
    case FW_ERR_BAD_CHECKSUM: return "bad_checksum";
    case FW_ERR_UNKNOWN_FLAGS: return "unknown_flags";
    case FW_ERR_UNKNOWN_KIND: return "unknown_kind";
    case FW_ERR_BAD_DEVICE_ID: return "bad_device_id";
    case FW_ERR_MALFORMED_PAYLOAD: return "malformed_payload";
    case FW_ERR_TRAILING_BYTES: return "trailing_bytes";
    case FW_ERR_OUT_OF_RANGE: return "out_of_range";
    case FW_ERR_TOO_MANY_ITEMS: return "too_many_items";
    case FW_ERR_BAD_NAME: return "bad_name";
    case FW_ERR_BAD_BATCH: return "bad_batch";
    case FW_ERR_BAD_AUTH_TAG: return "bad_auth_tag";
    case FW_ERR_BUFFER_TOO_SMALL: return "buffer_too_small";
    case FW_ERR_INVALID_ARGUMENT: return "invalid_argument";
    case FW_ERR_UNSUPPORTED: return "unsupported";
    case FW_END: return "end";
    }
    return "unknown_result";
}

/* ========================================================================
 * CRC-32C (section 5): reflected polynomial 0x82F63B78, init and xorout
 * 0xFFFFFFFF.
 */
#if defined(FW_CRC_BITWISE)
static uint32_t crc_update(uint32_t c, const uint8_t *p, size_t n)
{
    while (n--) {
        unsigned k;
        c ^= *p++;
        for (k = 0; k < 8u; k++) {
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        }
    }
    return c;
}
#elif defined(FW_CRC_NIBBLE)
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x105ec76fu, 0x20bd8edeu, 0x30e349b1u, 0x417b1dbcu, 0x5125dad3u,
    0x61c69362u, 0x7198540du, 0x82f63b78u, 0x92a8fc17u, 0xa24bb5a6u, 0xb21572c9u,
    0xc38d26c4u, 0xd3d3e1abu, 0xe330a81au, 0xf36e6f75u,
};
static uint32_t crc_update(uint32_t c, const uint8_t *p, size_t n)
{
    while (n--) {
        c ^= *p++;
        c = (c >> 4) ^ crc_nibble[c & 15u];
        c = (c >> 4) ^ crc_nibble[c & 15u];
    }
    return c;
}
#else
static const uint32_t crc_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
    0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
    0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
    0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
    0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
    0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
    0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
    0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
    0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
    0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
    0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
    0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
    0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
    0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
    0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
    0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
    0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
    0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
    0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
    0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
    0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
    0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
    0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
    0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
    0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
    0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
    0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
    0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
    0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
    0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};
static uint32_t crc_update(uint32_t c, const uint8_t *p, size_t n)
{
    while (n--) {
        c = (c >> 8) ^ crc_table[(c ^ *p++) & 0xFFu];
    }
    return c;
}
#endif

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    return crc_update(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
}

fw_result fw_crc32c(const uint8_t *p, size_t n, uint32_t *out)
{
    if (out == NULL || (p == NULL && n != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    *out = crc32c(p, n);
    return FW_OK;
}

/* ========================================================================
 * SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104), for the tag (section 6)
 */
#ifndef FW_NO_HMAC
typedef struct sha256_ctx {
    uint32_t h[8];
    uint8_t block[64];
    uint64_t total; /* bytes hashed */
    size_t fill;    /* bytes in block */
} sha256_ctx;

static const uint32_t sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u,
};

#define FW_ROTR(x, n) (((x) >> (n)) | ((x) << (32u - (n))))

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[16];
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    unsigned t;
    for (t = 0; t < 64u; t++) {
        uint32_t t1, t2;
        if (t < 16u) {
            w[t] = ((uint32_t)p[4u * t] << 24) | ((uint32_t)p[4u * t + 1u] << 16) |
                   ((uint32_t)p[4u * t + 2u] << 8) | (uint32_t)p[4u * t + 3u];
        } else {
            uint32_t w2 = w[(t - 2u) & 15u], w15 = w[(t - 15u) & 15u];
            uint32_t s0 = FW_ROTR(w15, 7u) ^ FW_ROTR(w15, 18u) ^ (w15 >> 3);
            uint32_t s1 = FW_ROTR(w2, 17u) ^ FW_ROTR(w2, 19u) ^ (w2 >> 10);
            w[t & 15u] += s0 + s1 + w[(t - 7u) & 15u];
        }
        t1 = k + (FW_ROTR(e, 6u) ^ FW_ROTR(e, 11u) ^ FW_ROTR(e, 25u)) + ((e & f) ^ (~e & g)) +
             sha256_k[t] + w[t & 15u];
        t2 = (FW_ROTR(a, 2u) ^ FW_ROTR(a, 13u) ^ FW_ROTR(a, 22u)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static void sha256_init(sha256_ctx *s)
{
    s->h[0] = 0x6a09e667u;
    s->h[1] = 0xbb67ae85u;
    s->h[2] = 0x3c6ef372u;
    s->h[3] = 0xa54ff53au;
    s->h[4] = 0x510e527fu;
    s->h[5] = 0x9b05688cu;
    s->h[6] = 0x1f83d9abu;
    s->h[7] = 0x5be0cd19u;
    s->total = 0;
    s->fill = 0;
}

static void sha256_update(sha256_ctx *s, const uint8_t *p, size_t n)
{
    s->total += (uint64_t)n;
    while (n > 0u) {
        size_t take = 64u - s->fill;
        if (take > n) {
            take = n;
        }
        memcpy(s->block + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
        if (s->fill == 64u) {
            sha256_block(s->h, s->block);
            s->fill = 0;
        }
    }
}

static void sha256_final(sha256_ctx *s, uint8_t out[32])
{
    uint64_t bits = s->total * 8u;
    unsigned i;
    s->block[s->fill++] = 0x80u;
    if (s->fill > 56u) {
        memset(s->block + s->fill, 0, 64u - s->fill);
        sha256_block(s->h, s->block);
        s->fill = 0;
    }
    memset(s->block + s->fill, 0, 56u - s->fill);
    for (i = 0; i < 8u; i++) {
        s->block[56u + i] = (uint8_t)(bits >> (56u - 8u * i));
    }
    sha256_block(s->h, s->block);
    for (i = 0; i < 32u; i++) {
        out[i] = (uint8_t)(s->h[i / 4u] >> (24u - 8u * (i % 4u)));
    }
}

fw_result fw_sha256(const uint8_t *msg, size_t n, uint8_t out[32])
{
    sha256_ctx s;
    if (out == NULL || (msg == NULL && n != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    sha256_init(&s);
    if (n != 0u) {
        sha256_update(&s, msg, n);
    }
    sha256_final(&s, out);
    return FW_OK;
}

fw_result fw_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t n,
                         uint8_t out[32])
{
    sha256_ctx s;
    uint8_t pad[64];
    uint8_t inner[32];
    unsigned i;
    if (out == NULL || (key == NULL && key_len != 0u) || (msg == NULL && n != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    memset(pad, 0, sizeof pad);
    if (key_len > 64u) {
        (void)fw_sha256(key, key_len, pad);
    } else if (key_len != 0u) {
        memcpy(pad, key, key_len);
    }
    for (i = 0; i < 64u; i++) {
        pad[i] ^= 0x36u;
    }
    sha256_init(&s);
    sha256_update(&s, pad, 64u);
    if (n != 0u) {
        sha256_update(&s, msg, n);
    }
    sha256_final(&s, inner);
    for (i = 0; i < 64u; i++) {
        pad[i] ^= (uint8_t)(0x36u ^ 0x5cu);
    }
    sha256_init(&s);
    sha256_update(&s, pad, 64u);
    sha256_update(&s, inner, 32u);
    sha256_final(&s, out);
    return FW_OK;
}
#else
fw_result fw_sha256(const uint8_t *msg, size_t n, uint8_t out[32])
{
    (void)msg;
    (void)n;
    (void)out;
    return FW_ERR_UNSUPPORTED;
}

fw_result fw_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t n,
                         uint8_t out[32])
{
    (void)key;
    (void)key_len;
    (void)msg;
    (void)n;
    (void)out;
    return FW_ERR_UNSUPPORTED;
}
#endif

/* ========================================================================
 * Field rules shared by encoder and decoder (section 4)
 */
static int name_char_ok(uint8_t c, int first)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_') {
        return 1;
    }
    if (first) {
        return 0;
    }
    return (c >= '0' && c <= '9') || c == '.' || c == '-';
}

static int name_ok(const uint8_t *p, size_t n)
{
    size_t i;
    if (n == 0u || n > FW_MAX_NAME_LEN) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!name_char_ok(p[i], i == 0u)) {
            return 0;
        }
    }
    return 1;
}

/* Well-formed UTF-8 (Unicode table 3-7): no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static int utf8_ok(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        size_t more;
        uint8_t lo = 0x80u, hi = 0xBFu;
        if (b < 0x80u) {
            i++;
            continue;
        }
        if (b >= 0xC2u && b <= 0xDFu) {
            more = 1;
        } else if (b >= 0xE0u && b <= 0xEFu) {
            more = 2;
            if (b == 0xE0u) {
                lo = 0xA0u;
            } else if (b == 0xEDu) {
                hi = 0x9Fu;
            }
        } else if (b >= 0xF0u && b <= 0xF4u) {
            more = 3;
            if (b == 0xF0u) {
                lo = 0x90u;
            } else if (b == 0xF4u) {
                hi = 0x8Fu;
            }
        } else {
            return 0;
        }
        if (n - i <= more) {
            return 0;
        }
        if (p[i + 1u] < lo || p[i + 1u] > hi) {
            return 0;
        }
        for (i += 2u; more > 1u; more--, i++) {
            if ((p[i] & 0xC0u) != 0x80u) {
                return 0;
            }
        }
    }
    return 1;
}

static uint64_t f64_bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static int f64_bits_finite(uint64_t u)
{
    return ((u >> 52) & 0x7FFu) != 0x7FFu;
}

/* ========================================================================
 * Reading bytes (the decoder, and the iterators over decoded lists)
 */
typedef struct rd {
    const uint8_t *p;
    const uint8_t *end;
} rd;

static fw_result get_u8(rd *r, uint8_t *v)
{
    if (r->p >= r->end) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    *v = *r->p++;
    return FW_OK;
}

/* Unsigned LEB128 (3.2): at most max_bytes, the last of them <= last_max. */
static fw_result get_varint(rd *r, unsigned max_bytes, uint8_t last_max, uint32_t *v)
{
    uint32_t out = 0;
    unsigned i;
    for (i = 0; i < max_bytes; i++) {
        uint8_t b;
        if (get_u8(r, &b) != FW_OK) {
            return FW_ERR_MALFORMED_PAYLOAD;
        }
        out |= (uint32_t)(b & 0x7Fu) << (7u * i);
        if ((b & 0x80u) == 0u) {
            if (i == max_bytes - 1u && b > last_max) {
                return FW_ERR_MALFORMED_PAYLOAD;
            }
            *v = out;
            return FW_OK;
        }
    }
    return FW_ERR_MALFORMED_PAYLOAD;
}

static fw_result get_u32(rd *r, uint32_t *v)
{
    return get_varint(r, 5u, 0x0Fu, v);
}

/* Bytes with a u32 length prefix; not checked for UTF-8 here. */
static fw_result get_bytes(rd *r, fw_str *s)
{
    uint32_t len;
    if (get_u32(r, &len) != FW_OK) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    if ((size_t)(r->end - r->p) < (size_t)len) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    s->ptr = (const char *)r->p;
    s->len = (size_t)len;
    r->p += len;
    return FW_OK;
}

static fw_result get_f64(rd *r, double *v)
{
    uint64_t u = 0;
    unsigned i;
    if ((size_t)(r->end - r->p) < 8u) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    for (i = 0; i < 8u; i++) {
        u |= (uint64_t)r->p[i] << (8u * i);
    }
    r->p += 8;
    memcpy(v, &u, sizeof u);
    return FW_OK;
}

/* One reading of a list already checked (or to be checked by the caller). */
static fw_result get_reading(rd *r, fw_reading *out)
{
    if (get_bytes(r, &out->name) != FW_OK) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    return get_f64(r, &out->value);
}

/* ========================================================================
 * Iterators
 */
fw_result fw_readings_begin(const fw_monitoring *m, fw_reading_iter *it)
{
    if (m == NULL || it == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    it->items = m->readings;
    it->wire = m->readings_wire;
    it->wire_end = m->readings_wire != NULL ? m->readings_wire + m->readings_wire_len : NULL;
    it->left = m->reading_count;
    if (it->left != 0u && it->items == NULL && it->wire == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    return FW_OK;
}

fw_result fw_readings_next(fw_reading_iter *it, fw_reading *out)
{
    if (it == NULL || out == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    if (it->left == 0u) {
        return FW_END;
    }
    if (it->items != NULL) {
        *out = *it->items++;
    } else if (it->wire != NULL) {
        rd r;
        fw_result res;
        r.p = it->wire;
        r.end = it->wire_end;
        res = get_reading(&r, out);
        if (res != FW_OK) {
            it->left = 0;
            return res;
        }
        it->wire = r.p;
    } else {
        return FW_ERR_INVALID_ARGUMENT;
    }
    it->left--;
    return FW_OK;
}

fw_result fw_samples_begin(const fw_batch *b, fw_sample_iter *it)
{
    if (b == NULL || it == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    it->items = b->samples;
    it->wire = b->samples_wire;
    it->wire_end = b->samples_wire != NULL ? b->samples_wire + b->samples_wire_len : NULL;
    it->left = b->sample_count;
    if (it->left != 0u && it->items == NULL && it->wire == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    return FW_OK;
}

#ifndef FW_NO_DECODE
static fw_result parse_sample(rd *r, fw_sample *s);
#endif

fw_result fw_samples_next(fw_sample_iter *it, fw_sample *out)
{
    if (it == NULL || out == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    if (it->left == 0u) {
        return FW_END;
    }
    if (it->items != NULL) {
        *out = *it->items++;
    } else if (it->wire != NULL) {
#ifndef FW_NO_DECODE
        rd r;
        fw_result res;
        r.p = it->wire;
        r.end = it->wire_end;
        res = parse_sample(&r, out);
        if (res != FW_OK) {
            it->left = 0;
            return res;
        }
        it->wire = r.p;
#else
        return FW_ERR_UNSUPPORTED;
#endif
    } else {
        return FW_ERR_INVALID_ARGUMENT;
    }
    it->left--;
    return FW_OK;
}

/* ========================================================================
 * Encoding
 *
 * The writer counts every byte, writing those that fit: after the payload
 * the exact frame length is known, so "longer than 1200" and "larger than
 * the buffer" are told apart, and the checks run in wire order (the first
 * bad field decides the code, as in the decoder).
 */
typedef struct wr {
    uint8_t *buf;
    size_t cap;
    size_t pos;
} wr;

static void put_u8(wr *w, uint8_t b)
{
    if (w->pos < w->cap) {
        w->buf[w->pos] = b;
    }
    w->pos++;
}

static void put_bytes(wr *w, const uint8_t *p, size_t n)
{
    if (w->pos <= w->cap && n <= w->cap - w->pos) {
        if (n != 0u) {
            memcpy(w->buf + w->pos, p, n);
        }
        w->pos += n;
    } else {
        while (n--) {
            put_u8(w, *p++);
        }
    }
}

static void put_varint(wr *w, uint32_t v)
{
    while (v >= 0x80u) {
        put_u8(w, (uint8_t)(v | 0x80u));
        v >>= 7;
    }
    put_u8(w, (uint8_t)v);
}

static void put_le(wr *w, uint64_t v, unsigned n)
{
    unsigned i;
    for (i = 0; i < n; i++) {
        put_u8(w, (uint8_t)(v >> (8u * i)));
    }
}

/* Zigzag (3.3) without shifting negative numbers. */
static uint32_t zigzag32(int32_t v)
{
    uint32_t u = (uint32_t)v << 1;
    return v < 0 ? ~u : u;
}

static uint32_t zigzag16(int16_t v)
{
    uint32_t u = ((uint32_t)(uint16_t)v << 1) & 0xFFFFu;
    return v < 0 ? (~u & 0xFFFFu) : u;
}

/* A string: 0 .. max bytes of UTF-8 (out_of_range / malformed_payload). */
static fw_result put_text(wr *w, const fw_str *s, size_t max)
{
    if (s->ptr == NULL && s->len != 0u) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    if (s->len != 0u && !utf8_ok((const uint8_t *)s->ptr, s->len)) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    if (s->len > max) {
        return FW_ERR_OUT_OF_RANGE;
    }
    put_varint(w, (uint32_t)s->len);
    put_bytes(w, (const uint8_t *)s->ptr, s->len);
    return FW_OK;
}

static fw_result put_position(wr *w, const void *body)
{
    const fw_position *p = (const fw_position *)body;
    if (p->lat_e7 < -FW_LAT_MAX || p->lat_e7 > FW_LAT_MAX || p->lon_e7 < -FW_LON_MAX ||
        p->lon_e7 > FW_LON_MAX || p->alt_dm < -FW_ALT_MAX || p->alt_dm > FW_ALT_MAX ||
        p->heading_ddeg > FW_HEADING_MAX || p->fix > (uint8_t)FW_FIX_RTK_FIXED) {
        return FW_ERR_OUT_OF_RANGE;
    }
    put_varint(w, zigzag32(p->lat_e7));
    put_varint(w, zigzag32(p->lon_e7));
    put_varint(w, zigzag32(p->alt_dm));
    put_varint(w, p->speed_cm_s);
    put_varint(w, p->heading_ddeg);
    put_varint(w, p->hacc_cm);
    put_u8(w, p->fix);
    put_u8(w, p->satellites);
    return FW_OK;
}

/* Is `name` the name of one of the first `n` readings of m? */
static fw_result name_repeated(const fw_monitoring *m, size_t n, const fw_str *name, int *found)
{
    fw_reading_iter it;
    fw_reading r;
    fw_result res = fw_readings_begin(m, &it);
    *found = 0;
    while (res == FW_OK && n-- > 0u) {
        res = fw_readings_next(&it, &r);
        if (res == FW_OK && r.name.len == name->len && memcmp(r.name.ptr, name->ptr, name->len) == 0) {
            *found = 1;
        }
    }
    return res == FW_END ? FW_ERR_INVALID_ARGUMENT : res;
}

static fw_result put_monitoring(wr *w, const void *body)
{
    const fw_monitoring *m = (const fw_monitoring *)body;
    fw_reading_iter it;
    fw_reading r;
    fw_result res;
    size_t i;
    uint8_t has = m->present;
    if ((has & FW_HAS_BATTERY) != 0u && m->battery_pct > FW_BATTERY_MAX) {
        return FW_ERR_OUT_OF_RANGE;
    }
    if (m->reading_count > FW_MAX_READINGS) {
        return FW_ERR_TOO_MANY_ITEMS;
    }
    put_u8(w, (has & FW_HAS_BATTERY) != 0u);
    if ((has & FW_HAS_BATTERY) != 0u) {
        put_u8(w, m->battery_pct);
    }
    put_u8(w, (has & FW_HAS_SUPPLY) != 0u);
    if ((has & FW_HAS_SUPPLY) != 0u) {
        put_varint(w, m->supply_mv);
    }
    put_u8(w, (has & FW_HAS_TEMPERATURE) != 0u);
    if ((has & FW_HAS_TEMPERATURE) != 0u) {
        put_varint(w, zigzag16(m->temperature_cdeg));
    }
    put_u8(w, (has & FW_HAS_RSSI) != 0u);
    if ((has & FW_HAS_RSSI) != 0u) {
        put_u8(w, (uint8_t)m->rssi_dbm);
    }
    put_u8(w, (has & FW_HAS_UPTIME) != 0u);
    if ((has & FW_HAS_UPTIME) != 0u) {
        put_varint(w, m->uptime_s);
    }
    put_varint(w, (uint32_t)m->reading_count);
    res = fw_readings_begin(m, &it);
    if (res != FW_OK) {
        return res;
    }
    for (i = 0; i < m->reading_count; i++) {
        uint64_t bits;
        int dup;
        res = fw_readings_next(&it, &r);
        if (res != FW_OK) {
            return res == FW_END ? FW_ERR_INVALID_ARGUMENT : res;
        }
        if (r.name.ptr == NULL || !name_ok((const uint8_t *)r.name.ptr, r.name.len)) {
            return FW_ERR_BAD_NAME;
        }
        res = name_repeated(m, i, &r.name, &dup);
        if (res != FW_OK) {
            return res;
        }
        if (dup) {
            return FW_ERR_BAD_NAME;
        }
        bits = f64_bits(r.value);
        if (!f64_bits_finite(bits)) {
            return FW_ERR_OUT_OF_RANGE;
        }
        put_varint(w, (uint32_t)r.name.len);
        put_bytes(w, (const uint8_t *)r.name.ptr, r.name.len);
        put_le(w, bits, 8u);
    }
    return FW_OK;
}

static fw_result put_event(wr *w, const void *body)
{
    const fw_event *e = (const fw_event *)body;
    if (e->severity > (uint8_t)FW_SEV_CRITICAL) {
        return FW_ERR_OUT_OF_RANGE;
    }
    put_varint(w, e->code);
    put_u8(w, e->severity);
    if (e->text.ptr == NULL) {
        put_u8(w, 0);
        return FW_OK;
    }
    put_u8(w, 1);
    return put_text(w, &e->text, FW_MAX_EVENT_TEXT_LEN);
}

static fw_result put_hello(wr *w, const void *body)
{
    const fw_hello *h = (const fw_hello *)body;
    fw_result res = put_text(w, &h->firmware, FW_MAX_HELLO_TEXT_LEN);
    if (res != FW_OK) {
        return res;
    }
    res = put_text(w, &h->model, FW_MAX_HELLO_TEXT_LEN);
    if (res != FW_OK) {
        return res;
    }
    put_varint(w, h->capabilities);
    return FW_OK;
}

static fw_result put_batch(wr *w, const void *body)
{
    const fw_batch *b = (const fw_batch *)body;
    fw_sample_iter it;
    fw_sample s;
    fw_result res;
    size_t i;
    if (b->sample_count == 0u) {
        return FW_ERR_BAD_BATCH;
    }
    if (b->sample_count > FW_MAX_BATCH_SAMPLES) {
        return FW_ERR_TOO_MANY_ITEMS;
    }
    res = fw_samples_begin(b, &it);
    if (res != FW_OK) {
        return res;
    }
    put_varint(w, (uint32_t)b->sample_count);
    for (i = 0; i < b->sample_count; i++) {
        res = fw_samples_next(&it, &s);
        if (res != FW_OK) {
            return res == FW_END ? FW_ERR_INVALID_ARGUMENT : res;
        }
        put_varint(w, s.offset_ms);
        switch (s.kind) {
        case FW_KIND_POSITION:
            put_u8(w, s.kind);
            res = put_position(w, &s.record.position);
            break;
        case FW_KIND_MONITORING:
            put_u8(w, s.kind);
            res = put_monitoring(w, &s.record.monitoring);
            break;
        case FW_KIND_EVENT:
            put_u8(w, s.kind);
            res = put_event(w, &s.record.event);
            break;
        case FW_KIND_HELLO:
        case FW_KIND_BATCH:
            res = FW_ERR_BAD_BATCH;
            break;
        default:
            res = FW_ERR_UNKNOWN_KIND;
            break;
        }
        if (res != FW_OK) {
            return res;
        }
    }
    return FW_OK;
}

typedef fw_result (*put_fn)(wr *w, const void *body);

static fw_result encode_frame(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                              uint8_t kind, put_fn put, const void *body, const fw_key *key)
{
    wr w;
    fw_result res;
    size_t total;
    if (out_len == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    *out_len = 0;
    if (h == NULL || body == NULL || (buf == NULL && cap != 0u) ||
        (key != NULL && key->bytes == NULL && key->len != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
#ifdef FW_NO_HMAC
    if (key != NULL) {
        return FW_ERR_UNSUPPORTED;
    }
#endif
    if (h->device_id == 0u) {
        return FW_ERR_BAD_DEVICE_ID;
    }
    w.buf = buf;
    w.cap = cap;
    w.pos = 0;
    put_u8(&w, 0x46u);
    put_u8(&w, 0x57u);
    put_u8(&w, (uint8_t)FW_PROTOCOL_VERSION);
    put_u8(&w, key != NULL ? (uint8_t)FW_FLAG_AUTH : 0u);
    put_u8(&w, kind);
    put_le(&w, h->device_id, 4u);
    put_le(&w, h->sequence, 4u);
    put_le(&w, h->timestamp_ms, 8u);
    res = put(&w, body);
    if (res != FW_OK) {
        return res;
    }
    total = w.pos + (key != NULL ? FW_TAG_LEN : 0u) + FW_CRC_LEN;
    *out_len = total;
    if (total > FW_MAX_FRAME_LEN) {
        return FW_ERR_TOO_LONG;
    }
    if (total > cap) {
        return FW_ERR_BUFFER_TOO_SMALL;
    }
#ifndef FW_NO_HMAC
    if (key != NULL) {
        uint8_t mac[32];
        (void)fw_hmac_sha256(key->bytes, key->len, buf, w.pos, mac);
        put_bytes(&w, mac, FW_TAG_LEN);
    }
#endif
    put_le(&w, crc32c(buf, w.pos), 4u);
    return FW_OK;
}

fw_result fw_encode_position(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                             const fw_position *p, const fw_key *key)
{
    return encode_frame(buf, cap, out_len, h, FW_KIND_POSITION, put_position, p, key);
}

fw_result fw_encode_monitoring(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                               const fw_monitoring *m, const fw_key *key)
{
    return encode_frame(buf, cap, out_len, h, FW_KIND_MONITORING, put_monitoring, m, key);
}

fw_result fw_encode_event(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                          const fw_event *e, const fw_key *key)
{
    return encode_frame(buf, cap, out_len, h, FW_KIND_EVENT, put_event, e, key);
}

fw_result fw_encode_hello(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                          const fw_hello *hello, const fw_key *key)
{
    return encode_frame(buf, cap, out_len, h, FW_KIND_HELLO, put_hello, hello, key);
}

fw_result fw_encode_batch(uint8_t *buf, size_t cap, size_t *out_len, const fw_header *h,
                          const fw_batch *b, const fw_key *key)
{
    return encode_frame(buf, cap, out_len, h, FW_KIND_BATCH, put_batch, b, key);
}

fw_result fw_encode(uint8_t *buf, size_t cap, size_t *out_len, const fw_frame *f,
                    const fw_key *key)
{
    if (f == NULL) {
        if (out_len != NULL) {
            *out_len = 0;
        }
        return FW_ERR_INVALID_ARGUMENT;
    }
    switch (f->kind) {
    case FW_KIND_POSITION:
        return fw_encode_position(buf, cap, out_len, &f->header, &f->body.position, key);
    case FW_KIND_MONITORING:
        return fw_encode_monitoring(buf, cap, out_len, &f->header, &f->body.monitoring, key);
    case FW_KIND_EVENT:
        return fw_encode_event(buf, cap, out_len, &f->header, &f->body.event, key);
    case FW_KIND_HELLO:
        return fw_encode_hello(buf, cap, out_len, &f->header, &f->body.hello, key);
    case FW_KIND_BATCH:
        return fw_encode_batch(buf, cap, out_len, &f->header, &f->body.batch, key);
    default:
        if (out_len != NULL) {
            *out_len = 0;
        }
        return FW_ERR_UNKNOWN_KIND;
    }
}

/* ========================================================================
 * Per-device sequence helper
 */
fw_result fw_device_init(fw_device *d, uint32_t device_id, uint32_t first_sequence,
                         const fw_key *key)
{
    if (d == NULL || (key != NULL && key->bytes == NULL && key->len != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    if (device_id == 0u) {
        return FW_ERR_BAD_DEVICE_ID;
    }
#ifdef FW_NO_HMAC
    if (key != NULL) {
        return FW_ERR_UNSUPPORTED;
    }
#endif
    d->device_id = device_id;
    d->next_sequence = first_sequence;
    d->has_key = key != NULL;
    d->key.bytes = key != NULL ? key->bytes : NULL;
    d->key.len = key != NULL ? key->len : 0u;
    return FW_OK;
}

fw_result fw_device_resume(fw_device *d, uint32_t device_id, uint32_t saved_sequence,
                           const fw_key *key)
{
    return fw_device_init(d, device_id, saved_sequence + FW_SEQ_BOOT_JUMP, key);
}

fw_result fw_device_save_due(const fw_device *d, uint8_t *due, uint32_t *value)
{
    if (d == NULL || due == NULL || value == NULL) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    *due = (d->next_sequence % FW_SEQ_SAVE_EVERY) == 0u;
    *value = d->next_sequence;
    return FW_OK;
}

static fw_result device_encode(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                               uint64_t timestamp_ms, uint8_t kind, put_fn put, const void *body)
{
    fw_header h;
    fw_result res;
    if (d == NULL) {
        if (out_len != NULL) {
            *out_len = 0;
        }
        return FW_ERR_INVALID_ARGUMENT;
    }
    h.device_id = d->device_id;
    h.sequence = d->next_sequence;
    h.timestamp_ms = timestamp_ms;
    res = encode_frame(buf, cap, out_len, &h, kind, put, body, d->has_key ? &d->key : NULL);
    if (res == FW_OK) {
        d->next_sequence++;
    }
    return res;
}

fw_result fw_device_position(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                             uint64_t timestamp_ms, const fw_position *p)
{
    return device_encode(d, buf, cap, out_len, timestamp_ms, FW_KIND_POSITION, put_position, p);
}

fw_result fw_device_monitoring(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                               uint64_t timestamp_ms, const fw_monitoring *m)
{
    return device_encode(d, buf, cap, out_len, timestamp_ms, FW_KIND_MONITORING, put_monitoring,
                         m);
}

fw_result fw_device_event(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                          uint64_t timestamp_ms, const fw_event *e)
{
    return device_encode(d, buf, cap, out_len, timestamp_ms, FW_KIND_EVENT, put_event, e);
}

fw_result fw_device_hello(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                          uint64_t timestamp_ms, const fw_hello *hello)
{
    return device_encode(d, buf, cap, out_len, timestamp_ms, FW_KIND_HELLO, put_hello, hello);
}

fw_result fw_device_batch(fw_device *d, uint8_t *buf, size_t cap, size_t *out_len,
                          uint64_t timestamp_ms, const fw_batch *b)
{
    return device_encode(d, buf, cap, out_len, timestamp_ms, FW_KIND_BATCH, put_batch, b);
}

/* ========================================================================
 * Decoding (section 7): each field is checked right after it is read, so
 * the first bad field decides the code.
 */
#ifndef FW_NO_DECODE
static fw_result get_u16(rd *r, uint16_t *v)
{
    uint32_t u;
    if (get_varint(r, 3u, 0x03u, &u) != FW_OK) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    *v = (uint16_t)u;
    return FW_OK;
}

static int32_t unzigzag32(uint32_t u)
{
    int32_t half = (int32_t)(u >> 1);
    return (u & 1u) != 0u ? -half - 1 : half;
}

static fw_result get_i32(rd *r, int32_t *v)
{
    uint32_t u;
    if (get_u32(r, &u) != FW_OK) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    *v = unzigzag32(u);
    return FW_OK;
}

static fw_result get_i16(rd *r, int16_t *v)
{
    uint16_t u;
    if (get_u16(r, &u) != FW_OK) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    *v = (int16_t)unzigzag32(u);
    return FW_OK;
}

/* An option tag: 0 absent, 1 present, else malformed. */
static fw_result get_present(rd *r, int *present)
{
    uint8_t b;
    if (get_u8(r, &b) != FW_OK || b > 1u) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    *present = b;
    return FW_OK;
}

/* A string: length, bytes, UTF-8 check, then at most `max` bytes. */
static fw_result get_text(rd *r, fw_str *s, size_t max)
{
    if (get_bytes(r, s) != FW_OK || !utf8_ok((const uint8_t *)s->ptr, s->len)) {
        return FW_ERR_MALFORMED_PAYLOAD;
    }
    return s->len <= max ? FW_OK : FW_ERR_OUT_OF_RANGE;
}

#define FW_TRY(expr)                                                                               \
    do {                                                                                           \
        fw_result fw_try_res_ = (expr);                                                            \
        if (fw_try_res_ != FW_OK) {                                                                \
            return fw_try_res_;                                                                    \
        }                                                                                          \
    } while (0)
#define FW_ENSURE(ok, code)                                                                        \
    do {                                                                                           \
        if (!(ok)) {                                                                               \
            return (code);                                                                         \
        }                                                                                          \
    } while (0)

static fw_result parse_position(rd *r, fw_position *p)
{
    FW_TRY(get_i32(r, &p->lat_e7));
    FW_ENSURE(p->lat_e7 >= -FW_LAT_MAX && p->lat_e7 <= FW_LAT_MAX, FW_ERR_OUT_OF_RANGE);
    FW_TRY(get_i32(r, &p->lon_e7));
    FW_ENSURE(p->lon_e7 >= -FW_LON_MAX && p->lon_e7 <= FW_LON_MAX, FW_ERR_OUT_OF_RANGE);
    FW_TRY(get_i32(r, &p->alt_dm));
    FW_ENSURE(p->alt_dm >= -FW_ALT_MAX && p->alt_dm <= FW_ALT_MAX, FW_ERR_OUT_OF_RANGE);
    FW_TRY(get_u16(r, &p->speed_cm_s));
    FW_TRY(get_u16(r, &p->heading_ddeg));
    FW_ENSURE(p->heading_ddeg <= FW_HEADING_MAX, FW_ERR_OUT_OF_RANGE);
    FW_TRY(get_u16(r, &p->hacc_cm));
    FW_TRY(get_u8(r, &p->fix));
    FW_ENSURE(p->fix <= (uint8_t)FW_FIX_RTK_FIXED, FW_ERR_OUT_OF_RANGE);
    return get_u8(r, &p->satellites);
}

static fw_result parse_monitoring(rd *r, fw_monitoring *m)
{
    int present;
    uint32_t count, i;
    const uint8_t *start;
    m->present = 0;
    m->battery_pct = 0;
    m->supply_mv = 0;
    m->temperature_cdeg = 0;
    m->rssi_dbm = 0;
    m->uptime_s = 0;
    FW_TRY(get_present(r, &present));
    if (present) {
        m->present |= FW_HAS_BATTERY;
        FW_TRY(get_u8(r, &m->battery_pct));
        FW_ENSURE(m->battery_pct <= FW_BATTERY_MAX, FW_ERR_OUT_OF_RANGE);
    }
    FW_TRY(get_present(r, &present));
    if (present) {
        m->present |= FW_HAS_SUPPLY;
        FW_TRY(get_u16(r, &m->supply_mv));
    }
    FW_TRY(get_present(r, &present));
    if (present) {
        m->present |= FW_HAS_TEMPERATURE;
        FW_TRY(get_i16(r, &m->temperature_cdeg));
    }
    FW_TRY(get_present(r, &present));
    if (present) {
        uint8_t b;
        m->present |= FW_HAS_RSSI;
        FW_TRY(get_u8(r, &b));
        m->rssi_dbm = (int8_t)(b < 128u ? (int)b : (int)b - 256);
    }
    FW_TRY(get_present(r, &present));
    if (present) {
        m->present |= FW_HAS_UPTIME;
        FW_TRY(get_u32(r, &m->uptime_s));
    }
    FW_TRY(get_u32(r, &count));
    FW_ENSURE(count <= FW_MAX_READINGS, FW_ERR_TOO_MANY_ITEMS);
    start = r->p;
    for (i = 0; i < count; i++) {
        fw_str name;
        double value;
        uint32_t j;
        rd earlier;
        FW_TRY(get_bytes(r, &name));
        FW_ENSURE(utf8_ok((const uint8_t *)name.ptr, name.len), FW_ERR_MALFORMED_PAYLOAD);
        FW_ENSURE(name_ok((const uint8_t *)name.ptr, name.len), FW_ERR_BAD_NAME);
        /* Walk the readings already checked for the same name. */
        earlier.p = start;
        earlier.end = r->end;
        for (j = 0; j < i; j++) {
            fw_reading e;
            FW_TRY(get_reading(&earlier, &e));
            FW_ENSURE(e.name.len != name.len || memcmp(e.name.ptr, name.ptr, name.len) != 0,
                      FW_ERR_BAD_NAME);
        }
        FW_TRY(get_f64(r, &value));
        FW_ENSURE(f64_bits_finite(f64_bits(value)), FW_ERR_OUT_OF_RANGE);
    }
    m->reading_count = count;
    m->readings = NULL;
    m->readings_wire = start;
    m->readings_wire_len = (size_t)(r->p - start);
    return FW_OK;
}

static fw_result parse_event(rd *r, fw_event *e)
{
    int present;
    FW_TRY(get_u16(r, &e->code));
    FW_TRY(get_u8(r, &e->severity));
    FW_ENSURE(e->severity <= (uint8_t)FW_SEV_CRITICAL, FW_ERR_OUT_OF_RANGE);
    FW_TRY(get_present(r, &present));
    e->text.ptr = NULL;
    e->text.len = 0;
    if (present) {
        return get_text(r, &e->text, FW_MAX_EVENT_TEXT_LEN);
    }
    return FW_OK;
}

static fw_result parse_hello(rd *r, fw_hello *h)
{
    FW_TRY(get_text(r, &h->firmware, FW_MAX_HELLO_TEXT_LEN));
    FW_TRY(get_text(r, &h->model, FW_MAX_HELLO_TEXT_LEN));
    return get_u32(r, &h->capabilities);
}

static fw_result parse_sample(rd *r, fw_sample *s)
{
    FW_TRY(get_u32(r, &s->offset_ms));
    FW_TRY(get_u8(r, &s->kind));
    switch (s->kind) {
    case FW_KIND_POSITION: return parse_position(r, &s->record.position);
    case FW_KIND_MONITORING: return parse_monitoring(r, &s->record.monitoring);
    case FW_KIND_EVENT: return parse_event(r, &s->record.event);
    case FW_KIND_HELLO:
    case FW_KIND_BATCH: return FW_ERR_BAD_BATCH;
    default: return FW_ERR_UNKNOWN_KIND;
    }
}

static fw_result parse_batch(rd *r, fw_batch *b)
{
    uint32_t count, i;
    const uint8_t *start;
    FW_TRY(get_u32(r, &count));
    FW_ENSURE(count != 0u, FW_ERR_BAD_BATCH);
    FW_ENSURE(count <= FW_MAX_BATCH_SAMPLES, FW_ERR_TOO_MANY_ITEMS);
    start = r->p;
    for (i = 0; i < count; i++) {
        fw_sample s;
        FW_TRY(parse_sample(r, &s));
    }
    b->sample_count = count;
    b->samples = NULL;
    b->samples_wire = start;
    b->samples_wire_len = (size_t)(r->p - start);
    return FW_OK;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

fw_result fw_decode(const uint8_t *datagram, size_t len, fw_frame *out)
{
    const uint8_t *d = datagram;
    size_t covered;
    uint8_t flags;
    rd r;
    fw_result res;
    if (out == NULL || (d == NULL && len != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    memset(out, 0, sizeof *out);
    if (len < FW_MIN_FRAME_LEN) {
        return FW_ERR_TOO_SHORT;
    }
    if (len > FW_MAX_FRAME_LEN) {
        return FW_ERR_TOO_LONG;
    }
    if (d[0] != 0x46u || d[1] != 0x57u) {
        return FW_ERR_BAD_MAGIC;
    }
    if (d[2] != FW_PROTOCOL_VERSION) {
        return FW_ERR_UNSUPPORTED_VERSION;
    }
    covered = len - FW_CRC_LEN;
    if (crc32c(d, covered) != le32(d + covered)) {
        return FW_ERR_BAD_CHECKSUM;
    }
    flags = d[3];
    if ((flags & (uint8_t)~FW_FLAG_AUTH) != 0u) {
        return FW_ERR_UNKNOWN_FLAGS;
    }
    if ((flags & FW_FLAG_AUTH) != 0u) {
        if (covered < FW_HEADER_LEN + FW_TAG_LEN) {
            return FW_ERR_TOO_SHORT;
        }
        covered -= FW_TAG_LEN;
        out->tag = d + covered;
        out->signed_bytes = d;
        out->signed_len = covered;
    }
    if (d[4] < (uint8_t)FW_KIND_POSITION || d[4] > (uint8_t)FW_KIND_BATCH) {
        return FW_ERR_UNKNOWN_KIND;
    }
    out->kind = d[4];
    out->header.device_id = le32(d + 5);
    if (out->header.device_id == 0u) {
        return FW_ERR_BAD_DEVICE_ID;
    }
    out->header.sequence = le32(d + 9);
    out->header.timestamp_ms = (uint64_t)le32(d + 13) | ((uint64_t)le32(d + 17) << 32);
    r.p = d + FW_HEADER_LEN;
    r.end = d + covered;
    switch (out->kind) {
    case FW_KIND_POSITION: res = parse_position(&r, &out->body.position); break;
    case FW_KIND_MONITORING: res = parse_monitoring(&r, &out->body.monitoring); break;
    case FW_KIND_EVENT: res = parse_event(&r, &out->body.event); break;
    case FW_KIND_HELLO: res = parse_hello(&r, &out->body.hello); break;
    default: res = parse_batch(&r, &out->body.batch); break;
    }
    if (res != FW_OK) {
        return res;
    }
    if (r.p != r.end) {
        return FW_ERR_TRAILING_BYTES;
    }
    return FW_OK;
}

fw_result fw_frame_verify(const fw_frame *f, const fw_key *key)
{
#ifndef FW_NO_HMAC
    uint8_t mac[32];
    uint8_t diff = 0;
    unsigned i;
    if (f == NULL || key == NULL || f->tag == NULL || f->signed_bytes == NULL ||
        (key->bytes == NULL && key->len != 0u)) {
        return FW_ERR_INVALID_ARGUMENT;
    }
    (void)fw_hmac_sha256(key->bytes, key->len, f->signed_bytes, f->signed_len, mac);
    for (i = 0; i < FW_TAG_LEN; i++) {
        diff |= (uint8_t)(mac[i] ^ f->tag[i]);
    }
    return diff == 0u ? FW_OK : FW_ERR_BAD_AUTH_TAG;
#else
    (void)f;
    (void)key;
    return FW_ERR_UNSUPPORTED;
#endif
}
#else
fw_result fw_decode(const uint8_t *datagram, size_t len, fw_frame *out)
{
    (void)datagram;
    (void)len;
    (void)out;
    return FW_ERR_UNSUPPORTED;
}

fw_result fw_frame_verify(const fw_frame *f, const fw_key *key)
{
    (void)f;
    (void)key;
    return FW_ERR_UNSUPPORTED;
}
#endif
