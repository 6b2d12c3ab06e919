# Every Debian package peercam's build, tests and benchmarks install, in one place (sourced by
# scripts/install-deps.sh, scripts/cross-build.sh, tests/vm/run.sh and scripts/check-installs.sh).
# Installs go through scripts/apt-install.sh (simulated first; only allowed removals).

# the host: building, and every test stage that runs on the host
PEERCAM_HOST_PACKAGES=(
  build-essential libc6-dev pkg-config cmake nasm clang libclang-dev libasound2-dev  # build
  iproute2 util-linux iptables procps   # unshare/ip/tc/iptables/sysctl for the test namespaces and link rig
  faketime                              # libfaketime: moves the wall clock of a running service (tests/security, clock faults)
  chromium                              # browser end-to-end tests
  python3-venv python3-pip              # aiortc interop tests
  alsa-utils                            # aplay/arecord for the ALSA file-plugin rig
  mosquitto mosquitto-clients           # the MQTT broker of the events stage (tests/events)
  coturn                                # the TURN/STUN server of the remote-viewing stage (tests/remote)
  openssl libnss3-tools                 # tests/remote: its test CA (openssl) and a Chromium that trusts it (certutil)
  janus                                 # the SFU (VideoRoom) of the WHIP publishing stage (tests/whip)
  ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav  # RTSP clients and the snapshot decoder of the nvr stage (tests/nvr)
  espeak-ng                             # speech for the cry detector's "not a cry" tests
  gnuplot-nox                           # benchmark plots
  systemd                               # systemd-analyze verify/security for the unit tests
  genimage mtools dosfstools busybox    # image layout test (the SD-card partition table)
  qemu-user-static                      # run the aarch64 build under qemu (smoke test)
)

# cross builds for one Debian architecture (arm64, armhf) with its GNU triple
peercam_cross_packages() { # $1 = GNU triple, $2 = Debian arch
  echo pkg-config cmake clang libclang-dev "gcc-$1" "g++-$1" "libasound2-dev:$2"
}

# the VM rig (tests/vm): QEMU system emulation. On the machine image this removes its backported
# qemu-utils 10 (allowed in scripts/apt-install.sh, which says why).
PEERCAM_VM_PACKAGES=(qemu-system-arm)
