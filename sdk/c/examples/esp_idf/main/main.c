/*
 * fleetwire on ESP-IDF (v5.x): a Hello at boot, a Position every second, a
 * Monitoring frame with every tenth, over UDP. The frames are signed when
 * FLEETWIRE_KEY_HEX is set, with the sequence number kept in NVS as
 * PROTOCOL.md 2.1 asks of a signing device (saved every 65536th value,
 * resumed at saved + 131072 after a reboot).
 *
 * A sketch: not compiled by the repository's tests (there is no ESP-IDF
 * toolchain there). The fleetwire calls are the same as in linux_udp.c,
 * which is built and run against a live server by tests/sdk_c.rs. Replace
 * read_gnss() with your receiver's driver.
 */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_netif_sntp.h"
#include "esp_system.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "lwip/sockets.h"
#include "nvs.h"
#include "nvs_flash.h"
#include "protocol_examples_common.h"

#include "fleetwire.h"

#define FLEETWIRE_SERVER_IP "192.0.2.1" /* your server */
#define FLEETWIRE_SERVER_PORT 4480
#define FLEETWIRE_DEVICE_ID 42u
/* 64 hex digits for a 32-byte key, or "" to send unsigned frames. */
#define FLEETWIRE_KEY_HEX ""

static const char *TAG = "fleetwire";
static uint8_t frame[FW_MAX_FRAME_LEN];

/* Unix milliseconds once SNTP has set the clock, else 0 ("no clock"). */
static uint64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec < 1700000000) {
        return 0;
    }
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

static size_t parse_key(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2, i;
    unsigned int b;
    for (i = 0; i < n && i < cap; i++) {
        if (sscanf(hex + 2 * i, "%2x", &b) != 1) {
            return 0;
        }
        out[i] = (uint8_t)b;
    }
    return i;
}

/* Your GNSS driver goes here. */
static void read_gnss(fw_position *p)
{
    memset(p, 0, sizeof *p);
    p->lat_e7 = 481372000;
    p->lon_e7 = 115755000;
    p->alt_dm = 5190;
    p->hacc_cm = 250;
    p->fix = FW_FIX_3D;
    p->satellites = 9;
}

static void send_frame(int fd, const struct sockaddr_in *to, fw_result r, size_t len)
{
    if (r != FW_OK) {
        ESP_LOGE(TAG, "encode: %s", fw_result_str(r));
        return;
    }
    if (sendto(fd, frame, len, 0, (const struct sockaddr *)to, sizeof *to) != (int)len) {
        ESP_LOGW(TAG, "sendto failed");
    }
}

/* Saves the next sequence number when PROTOCOL.md 2.1 says it is due. */
static void persist_sequence(nvs_handle_t nvs, const fw_device *dev)
{
    uint8_t due;
    uint32_t value;
    if (fw_device_save_due(dev, &due, &value) == FW_OK && due) {
        nvs_set_u32(nvs, "seq", value);
        nvs_commit(nvs);
    }
}

void app_main(void)
{
    static uint8_t key_bytes[64];
    fw_key key = {key_bytes, 0};
    fw_device dev;
    nvs_handle_t nvs;
    uint32_t saved = 0;
    struct sockaddr_in to;
    size_t len;
    uint32_t tick;
    int fd;
    static const fw_hello hello = {FW_STR("1.0.0"), FW_STR("esp-idf sketch"),
                                   FW_CAP_GNSS | FW_CAP_MONITORING};

    ESP_ERROR_CHECK(nvs_flash_init());
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());
    ESP_ERROR_CHECK(example_connect());
    esp_sntp_config_t sntp = ESP_NETIF_SNTP_DEFAULT_CONFIG("pool.ntp.org");
    esp_netif_sntp_init(&sntp);
    esp_netif_sntp_sync_wait(pdMS_TO_TICKS(10000)); /* without it: timestamp 0 */

    key.len = parse_key(FLEETWIRE_KEY_HEX, key_bytes, sizeof key_bytes);
    ESP_ERROR_CHECK(nvs_open("fleetwire", NVS_READWRITE, &nvs));
    if (key.len > 0) {
        /* A signing device never reuses a number: resume past the saved one. */
        if (nvs_get_u32(nvs, "seq", &saved) == ESP_OK) {
            fw_device_resume(&dev, FLEETWIRE_DEVICE_ID, saved, &key);
        } else {
            fw_device_init(&dev, FLEETWIRE_DEVICE_ID, 0, &key);
        }
    } else {
        fw_device_init(&dev, FLEETWIRE_DEVICE_ID, 0, NULL);
    }

    fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_IP);
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(FLEETWIRE_SERVER_PORT);
    inet_pton(AF_INET, FLEETWIRE_SERVER_IP, &to.sin_addr);

    persist_sequence(nvs, &dev);
    send_frame(fd, &to, fw_device_hello(&dev, frame, sizeof frame, &len, now_ms(), &hello), len);
    for (tick = 1;; tick++) {
        fw_position p;
        read_gnss(&p);
        persist_sequence(nvs, &dev);
        send_frame(fd, &to, fw_device_position(&dev, frame, sizeof frame, &len, now_ms(), &p), len);
        if (tick % 10u == 0u) {
            fw_monitoring m;
            fw_reading r[1];
            memset(&m, 0, sizeof m);
            m.present = FW_HAS_UPTIME | FW_HAS_RSSI;
            m.uptime_s = (uint32_t)(xTaskGetTickCount() / configTICK_RATE_HZ);
            m.rssi_dbm = -60; /* esp_wifi_sta_get_ap_info() has the real one */
            r[0].name.ptr = "heap_free";
            r[0].name.len = 9;
            r[0].value = (double)esp_get_free_heap_size();
            m.readings = r;
            m.reading_count = 1;
            persist_sequence(nvs, &dev);
            send_frame(fd, &to, fw_device_monitoring(&dev, frame, sizeof frame, &len, now_ms(), &m),
                       len);
        }
        vTaskDelay(pdMS_TO_TICKS(1000));
    }
}
