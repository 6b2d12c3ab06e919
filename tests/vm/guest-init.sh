#!/bin/busybox sh
# /init of the rig-3 VM (docs/test-rigs.md; tests/vm/run.sh builds the initramfs around it).
# Loads vivid (a webcam-like V4L2 capture device) and snd-aloop (an ALSA loopback card), brings
# up user-mode networking, plays a 440 Hz tone into the loopback's playback side, and serves a
# shell on TCP 9000 for the host to drive the test (start/stop peercam, unbind/unload vivid).
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /run /var/log
mount -t tmpfs tmp /tmp

modprobe virtio_mmio
modprobe virtio_net
# vivid as a plain webcam: one capture node, one webcam input (docs/test-rigs.md, rig 3).
modprobe vivid n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0
modprobe snd-aloop

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# The "microphone": whatever is played into hw:Loopback,0 is captured from hw:Loopback,1.
# One aplay reading an endless stream (no gaps between repetitions), a 1 s buffer against the
# emulated CPU's hiccups.
( while true; do cat /tone-440.raw; done | aplay -D hw:Loopback,0 -B 1000000 -f S16_LE -r 48000 -c 2 2>>/var/log/aplay.log ) &

nc -ll -p 9000 -e /bin/sh &
echo "PEERCAM-VM-READY $(uname -r) $(ls /dev/video* 2>/dev/null) $(cat /proc/asound/cards 2>/dev/null | head -1)"
while true; do sleep 3600; done
