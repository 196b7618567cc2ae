/*
 * A POSIX device that sends to a fleetwire server over UDP: a Hello at
 * start, then a Position every interval (1 s by default) and a Monitoring
 * frame with every tenth Position.
 *
 *   cc -std=c99 -O2 -I sdk/c sdk/c/examples/linux_udp.c sdk/c/fleetwire.c -o linux_udp
 *   ./linux_udp -a 127.0.0.1:4480 -d 42 -n 60
 *
 * Options:
 *   -a HOST:PORT   server (default 127.0.0.1:4480)
 *   -d ID          device id, 1 ..= 4294967295 (default 42)
 *   -n COUNT       positions to send, 0 = until killed (default 0)
 *   -i MS          milliseconds between positions, 0 = no pause (default 1000)
 *   -k HEX         sign every frame with this key (hex)
 *   -s SEQ         first sequence number (default 0)
 *
 * At the end it prints what it sent: "sent N frames: 1 hello, P position,
 * M monitoring". Exit status 0 when every frame was sent, 1 on an error,
 * 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "fleetwire.h"

static int usage(void)
{
    fprintf(stderr, "usage: linux_udp [-a HOST:PORT] [-d ID] [-n COUNT] [-i MS] [-k HEX] [-s SEQ]\n");
    return 2;
}

static int parse_u32(const char *s, uint32_t *out)
{
    char *end;
    unsigned long long v;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v > 0xFFFFFFFFULL) {
        return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

static int parse_key(const char *hex, uint8_t *key, size_t cap, size_t *len)
{
    size_t n = strlen(hex), i;
    if (n % 2 != 0 || n / 2 > cap) {
        return 0;
    }
    for (i = 0; i < n / 2; i++) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1) {
            return 0;
        }
        key[i] = (uint8_t)b;
    }
    *len = n / 2;
    return 1;
}

/* Device clock in Unix milliseconds, strictly increasing between frames
 * (a device that sends faster than once a millisecond still stamps each
 * frame after the previous one). */
static uint64_t clock_ms(uint64_t *last)
{
    struct timespec ts;
    uint64_t now = 0;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0) {
        now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    }
    if (now <= *last) {
        now = *last + 1u;
    }
    *last = now;
    return now;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int open_socket(const char *target, struct sockaddr_storage *addr, socklen_t *addr_len)
{
    char host[256];
    const char *colon = strrchr(target, ':');
    struct addrinfo hints, *res;
    size_t hl;
    int fd, rc;
    if (colon == NULL || (hl = (size_t)(colon - target)) == 0 || hl >= sizeof host) {
        return -1;
    }
    memcpy(host, target, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') { /* [::1]:4480 */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "linux_udp: %s: %s\n", target, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd >= 0) {
        memcpy(addr, res->ai_addr, res->ai_addrlen);
        *addr_len = res->ai_addrlen;
    }
    freeaddrinfo(res);
    return fd;
}

int main(int argc, char **argv)
{
    const char *target = "127.0.0.1:4480";
    uint32_t device_id = 42, count = 0, interval_ms = 1000, first_seq = 0, i;
    uint8_t key_bytes[64];
    fw_key key = {key_bytes, 0};
    int signed_frames = 0, opt, fd;
    struct sockaddr_storage addr;
    socklen_t addr_len = 0;
    fw_device dev;
    fw_result r;
    uint8_t buf[FW_MAX_FRAME_LEN];
    size_t len;
    uint64_t last_ms = 0;
    unsigned long sent = 0, positions = 0, monitorings = 0;
    fw_position pos;
    fw_monitoring mon;
    fw_reading readings[2];
    static const fw_hello hello = {FW_STR("1.0.0"), FW_STR("linux_udp example"),
                                   FW_CAP_GNSS | FW_CAP_MONITORING};

    while ((opt = getopt(argc, argv, "a:d:n:i:k:s:")) != -1) {
        switch (opt) {
        case 'a': target = optarg; break;
        case 'd': if (!parse_u32(optarg, &device_id)) return usage(); break;
        case 'n': if (!parse_u32(optarg, &count)) return usage(); break;
        case 'i': if (!parse_u32(optarg, &interval_ms)) return usage(); break;
        case 's': if (!parse_u32(optarg, &first_seq)) return usage(); break;
        case 'k':
            if (!parse_key(optarg, key_bytes, sizeof key_bytes, &key.len)) return usage();
            signed_frames = 1;
            break;
        default: return usage();
        }
    }
    if (optind != argc) {
        return usage();
    }
    r = fw_device_init(&dev, device_id, first_seq, signed_frames ? &key : NULL);
    if (r != FW_OK) {
        fprintf(stderr, "linux_udp: device: %s\n", fw_result_str(r));
        return 2;
    }
    fd = open_socket(target, &addr, &addr_len);
    if (fd < 0) {
        fprintf(stderr, "linux_udp: cannot open a socket for %s\n", target);
        return 1;
    }

#define SEND()                                                                                     \
    do {                                                                                           \
        if (r != FW_OK) {                                                                          \
            fprintf(stderr, "linux_udp: encode: %s\n", fw_result_str(r));                         \
            return 1;                                                                              \
        }                                                                                          \
        if (sendto(fd, buf, len, 0, (const struct sockaddr *)&addr, addr_len) != (ssize_t)len) {   \
            perror("linux_udp: sendto");                                                          \
            return 1;                                                                              \
        }                                                                                          \
        sent++;                                                                                    \
    } while (0)

    r = fw_device_hello(&dev, buf, sizeof buf, &len, clock_ms(&last_ms), &hello);
    SEND();

    /* A walk north-east from Munich, about 10 m per position. */
    memset(&pos, 0, sizeof pos);
    pos.lat_e7 = 481372000;
    pos.lon_e7 = 115755000;
    pos.alt_dm = 5190;
    pos.speed_cm_s = 1000;
    pos.heading_ddeg = 450;
    pos.hacc_cm = 500;
    pos.fix = FW_FIX_3D;
    pos.satellites = 9;
    for (i = 0; count == 0 || i < count; i++) {
        r = fw_device_position(&dev, buf, sizeof buf, &len, clock_ms(&last_ms), &pos);
        SEND();
        positions++;
        pos.lat_e7 += 636;
        pos.lon_e7 += 954;
        if ((i + 1u) % 10u == 0u) {
            memset(&mon, 0, sizeof mon);
            mon.present = FW_HAS_BATTERY | FW_HAS_SUPPLY | FW_HAS_TEMPERATURE | FW_HAS_RSSI |
                          FW_HAS_UPTIME;
            mon.battery_pct = (uint8_t)(100u - (i / 10u) % 100u);
            mon.supply_mv = 12450;
            mon.temperature_cdeg = 2150;
            mon.rssi_dbm = -71;
            mon.uptime_s = (uint32_t)(((uint64_t)(i + 1u) * interval_ms) / 1000u);
            readings[0].name.ptr = "engine_rpm";
            readings[0].name.len = 10;
            readings[0].value = 2150.0;
            readings[1].name.ptr = "fuel_level";
            readings[1].name.len = 10;
            readings[1].value = 0.625;
            mon.readings = readings;
            mon.reading_count = 2;
            r = fw_device_monitoring(&dev, buf, sizeof buf, &len, clock_ms(&last_ms), &mon);
            SEND();
            monitorings++;
        }
        if (interval_ms != 0u && (count == 0 || i + 1u < count)) {
            sleep_ms(interval_ms);
        }
    }
    close(fd);
    printf("sent %lu frames: 1 hello, %lu position, %lu monitoring\n", sent, positions,
           monitorings);
    return 0;
}
