// The C SDK used from C++ (C++11 and later): fleetwire.h compiles as C++,
// links against fleetwire.c built by a C compiler (extern "C"), and a
// frame makes the round trip. Exit status 0 on success.
#include <cstdio>
#include <cstring>

#include "fleetwire.h"

namespace {

int failures = 0;

void check(bool ok, const char *what)
{
    if (!ok) {
        std::printf("FAIL %s\n", what);
        ++failures;
    }
}

} // namespace

int main()
{
    static const uint8_t key_bytes[] = {'s', 'e', 'c', 'r', 'e', 't'};
    const fw_key key = {key_bytes, sizeof key_bytes};
    fw_device dev;
    check(fw_device_init(&dev, 42, 7, &key) == FW_OK, "init");

    fw_position p;
    std::memset(&p, 0, sizeof p);
    p.lat_e7 = 481372000;
    p.lon_e7 = 115755000;
    p.fix = FW_FIX_3D;
    uint8_t buf[FW_MAX_FRAME_LEN];
    size_t len = 0;
    check(fw_device_position(&dev, buf, sizeof buf, &len, 1764000000000ULL, &p) == FW_OK, "encode");
    // The length query (no buffer) agrees, and the frame carries a tag.
    const fw_header h = {42, 7, 1764000000000ULL};
    size_t want = 0;
    check(fw_encode_position(NULL, 0, &want, &h, &p, &key) == FW_ERR_BUFFER_TOO_SMALL && want == len &&
              len <= FW_MAX_POSITION_FRAME_LEN + FW_TAG_LEN && buf[3] == FW_FLAG_AUTH,
          "length");

    const fw_reading readings[] = {{FW_STR("engine_rpm"), 2150.0}};
    fw_monitoring m;
    std::memset(&m, 0, sizeof m);
    m.readings = readings;
    m.reading_count = 1;
    uint8_t buf2[FW_MAX_FRAME_LEN];
    size_t len2 = 0;
    check(fw_device_monitoring(&dev, buf2, sizeof buf2, &len2, 0, &m) == FW_OK, "monitoring");

    fw_frame f;
    check(fw_decode(buf, len, &f) == FW_OK, "decode");
    check(f.header.device_id == 42 && f.header.sequence == 7 && f.kind == FW_KIND_POSITION &&
              f.body.position.lat_e7 == p.lat_e7,
          "fields");
    check(fw_frame_verify(&f, &key) == FW_OK, "tag");
    check(fw_decode(buf2, len2, &f) == FW_OK && f.header.sequence == 8, "second frame");
    fw_reading_iter it;
    fw_reading r;
    check(fw_readings_begin(&f.body.monitoring, &it) == FW_OK && fw_readings_next(&it, &r) == FW_OK &&
              r.name.len == 10 && std::memcmp(r.name.ptr, "engine_rpm", 10) == 0 &&
              fw_readings_next(&it, &r) == FW_END,
          "readings");
    buf[30] ^= 1;
    check(std::strcmp(fw_result_str(fw_decode(buf, len, &f)), "bad_checksum") == 0, "label");
    std::printf("C++ smoke: %s\n", failures == 0 ? "ok" : "FAILED");
    return failures == 0 ? 0 : 1;
}
