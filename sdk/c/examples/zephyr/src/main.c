/*
 * fleetwire on Zephyr: a Hello at boot, a Position every second, a
 * Monitoring frame with every tenth, over UDP (BSD sockets API).
 *
 * A sketch: not compiled by the repository's tests (there is no Zephyr SDK
 * there). The fleetwire calls are the same as in linux_udp.c, which is
 * built and run against a live server by tests/sdk_c.rs. The board has no
 * wall clock here, so timestamps are 0 ("no clock": the server uses its
 * arrival time); set one from SNTP or GNSS time if you have it. Replace
 * read_gnss() with your receiver's driver.
 */
#include <string.h>

#include <zephyr/kernel.h>
#include <zephyr/net/socket.h>
#include <zephyr/sys/printk.h>

#include "fleetwire.h"

#define FLEETWIRE_SERVER_IP "192.0.2.1" /* CONFIG_NET_CONFIG_PEER_IPV4_ADDR */
#define FLEETWIRE_SERVER_PORT 4480
#define FLEETWIRE_DEVICE_ID 43u

static uint8_t frame[FW_MAX_FRAME_LEN];

static void read_gnss(fw_position *p)
{
    memset(p, 0, sizeof *p);
    p->lat_e7 = 481372000;
    p->lon_e7 = 115755000;
    p->hacc_cm = 300;
    p->fix = FW_FIX_3D;
    p->satellites = 8;
}

static void send_frame(int fd, const struct sockaddr_in *to, fw_result r, size_t len)
{
    if (r != FW_OK) {
        printk("fleetwire: encode: %s\n", fw_result_str(r));
        return;
    }
    if (zsock_sendto(fd, frame, len, 0, (const struct sockaddr *)to, sizeof *to) != (ssize_t)len) {
        printk("fleetwire: sendto failed\n");
    }
}

int main(void)
{
    fw_device dev;
    struct sockaddr_in to;
    size_t len;
    uint32_t tick;
    int fd;
    static const fw_hello hello = {FW_STR("1.0.0"), FW_STR("zephyr sketch"),
                                   FW_CAP_GNSS | FW_CAP_MONITORING};

    /* Unsigned: the sequence starts at 0 at every boot, and the Hello tells
     * the server so. */
    if (fw_device_init(&dev, FLEETWIRE_DEVICE_ID, 0, NULL) != FW_OK) {
        return 0;
    }
    fd = zsock_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
    if (fd < 0) {
        printk("fleetwire: no socket\n");
        return 0;
    }
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(FLEETWIRE_SERVER_PORT);
    zsock_inet_pton(AF_INET, FLEETWIRE_SERVER_IP, &to.sin_addr);

    send_frame(fd, &to, fw_device_hello(&dev, frame, sizeof frame, &len, 0, &hello), len);
    for (tick = 1;; tick++) {
        fw_position p;
        read_gnss(&p);
        send_frame(fd, &to, fw_device_position(&dev, frame, sizeof frame, &len, 0, &p), len);
        if (tick % 10u == 0u) {
            fw_monitoring m;
            memset(&m, 0, sizeof m);
            m.present = FW_HAS_UPTIME;
            m.uptime_s = (uint32_t)(k_uptime_get() / 1000);
            send_frame(fd, &to, fw_device_monitoring(&dev, frame, sizeof frame, &len, 0, &m), len);
        }
        k_sleep(K_SECONDS(1));
    }
    return 0;
}
