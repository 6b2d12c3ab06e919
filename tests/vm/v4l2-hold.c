/* v4l2-hold: "another program" using the camera, for the rig-3 VM (busy device, idle stream-off).
 *
 *   v4l2-hold DEVICE SECONDS     stream DEVICE (640x480 YUYV, mmap) for SECONDS (0: until killed)
 *
 * Prints "v4l2-hold: streaming DEVICE" once STREAMON succeeded and "v4l2-hold: N frames" at the
 * end (exit 0); "v4l2-hold: DEVICE busy (STEP)" and exit 2 when the driver says EBUSY (someone
 * else streams from it); other errors exit 1. Built static by tests/vm/run.sh
 * (aarch64-linux-gnu-gcc -static), so the VM needs no extra libraries.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int fail(const char *dev, const char *step) {
    if (errno == EBUSY) {
        printf("v4l2-hold: %s busy (%s)\n", dev, step);
        return 2;
    }
    printf("v4l2-hold: %s: %s failed: %s\n", dev, step, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: v4l2-hold DEVICE SECONDS\n");
        return 1;
    }
    const char *dev = argv[1];
    double secs = atof(argv[2]);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = open(dev, O_RDWR | O_NONBLOCK);
    if (fd < 0) return fail(dev, "open");
    struct v4l2_format fmt = {.type = V4L2_BUF_TYPE_VIDEO_CAPTURE};
    fmt.fmt.pix.width = 640;
    fmt.fmt.pix.height = 480;
    fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_YUYV;
    fmt.fmt.pix.field = V4L2_FIELD_NONE;
    if (ioctl(fd, VIDIOC_S_FMT, &fmt) < 0) return fail(dev, "S_FMT");
    struct v4l2_requestbuffers req = {.count = 4, .type = V4L2_BUF_TYPE_VIDEO_CAPTURE, .memory = V4L2_MEMORY_MMAP};
    if (ioctl(fd, VIDIOC_REQBUFS, &req) < 0) return fail(dev, "REQBUFS");
    for (unsigned i = 0; i < req.count; i++) {
        struct v4l2_buffer b = {.type = V4L2_BUF_TYPE_VIDEO_CAPTURE, .memory = V4L2_MEMORY_MMAP, .index = i};
        if (ioctl(fd, VIDIOC_QUERYBUF, &b) < 0) return fail(dev, "QUERYBUF");
        if (mmap(NULL, b.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, b.m.offset) == MAP_FAILED)
            return fail(dev, "mmap");
        if (ioctl(fd, VIDIOC_QBUF, &b) < 0) return fail(dev, "QBUF");
    }
    enum v4l2_buf_type type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    if (ioctl(fd, VIDIOC_STREAMON, &type) < 0) return fail(dev, "STREAMON");
    printf("v4l2-hold: streaming %s\n", dev);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long frames = 0;
    while (!stop) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (secs > 0 && (now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9 >= secs) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        struct v4l2_buffer b = {.type = V4L2_BUF_TYPE_VIDEO_CAPTURE, .memory = V4L2_MEMORY_MMAP};
        if (ioctl(fd, VIDIOC_DQBUF, &b) < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return fail(dev, "DQBUF");
        }
        frames++;
        if (ioctl(fd, VIDIOC_QBUF, &b) < 0) return fail(dev, "QBUF");
    }
    ioctl(fd, VIDIOC_STREAMOFF, &type);
    printf("v4l2-hold: %ld frames\n", frames);
    return 0;
}
