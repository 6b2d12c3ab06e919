/* h264-feed: a "camera that sends H.264" for the rig-3 VM, through v4l2loopback.
 *
 *   h264-feed DEVICE FILE FPS
 *
 * Sets DEVICE's (a v4l2loopback node) output format to H264 at the stream's size (320x240 for
 * the fixture) and FPS, then writes FILE — an Annex-B elementary stream with an access unit
 * delimiter before every picture (tests/fixtures/h264/cam-cb-320x240.h264) — one access unit per
 * write() (= one V4L2 buffer for the reader, as a UVC camera delivers), FPS a second, looping.
 * Built static by tests/vm/run.sh (aarch64-linux-gnu-gcc -static).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: h264-feed DEVICE FILE FPS\n");
        return 1;
    }
    int fps = atoi(argv[3]);
    FILE *f = fopen(argv[2], "rb");
    if (!f || fps <= 0) {
        fprintf(stderr, "h264-feed: cannot read %s\n", argv[2]);
        return 1;
    }
    static unsigned char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    /* Access units start at each 00 00 00 01 09 (access unit delimiter). */
    size_t starts[4096];
    int n = 0;
    for (size_t i = 0; i + 5 <= len && n < 4095; i++)
        if (!buf[i] && !buf[i + 1] && !buf[i + 2] && buf[i + 3] == 1 && (buf[i + 4] & 0x1f) == 9) starts[n++] = i;
    starts[n] = len;
    if (n == 0) {
        fprintf(stderr, "h264-feed: no access unit delimiters in %s\n", argv[2]);
        return 1;
    }
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        fprintf(stderr, "h264-feed: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    struct v4l2_format fmt = {.type = V4L2_BUF_TYPE_VIDEO_OUTPUT};
    fmt.fmt.pix.width = 320;
    fmt.fmt.pix.height = 240;
    fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_H264;
    fmt.fmt.pix.field = V4L2_FIELD_NONE;
    if (ioctl(fd, VIDIOC_S_FMT, &fmt) < 0) {
        fprintf(stderr, "h264-feed: S_FMT: %s\n", strerror(errno));
        return 1;
    }
    struct v4l2_streamparm parm = {.type = V4L2_BUF_TYPE_VIDEO_OUTPUT};
    parm.parm.output.timeperframe.numerator = 1;
    parm.parm.output.timeperframe.denominator = fps;
    if (ioctl(fd, VIDIOC_S_PARM, &parm) < 0) fprintf(stderr, "h264-feed: S_PARM: %s\n", strerror(errno));
    printf("h264-feed: %d access units, %dx%d H264 at %d fps into %s\n", n, fmt.fmt.pix.width, fmt.fmt.pix.height,
           fps, argv[1]);
    fflush(stdout);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long k = 0;; k++) {
        int i = k % n;
        if (write(fd, buf + starts[i], starts[i + 1] - starts[i]) < 0) {
            fprintf(stderr, "h264-feed: write: %s\n", strerror(errno));
            return 1;
        }
        next.tv_nsec += 1000000000L / fps;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
