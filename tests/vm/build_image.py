#!/usr/bin/env python3
"""Builds the rig-3 initramfs (gzip'd newc cpio) without root, cpio or mknod.

  build_image.py --kernel-root DIR --busybox FILE --aplay FILE --peercam FILE --hold FILE --feed FILE
                 --extra-module KO --h264 FILE --out FILE

DIR is a Debian arm64 linux-image .deb extracted with `dpkg -x` (lib/modules/<version>/...).
Puts in: busybox (+ /init = tests/vm/guest-init.sh), the modules vivid, snd-aloop, virtio_mmio,
virtio_net with everything they depend on (from `depmod -b`'s modules.dep) and a modules.dep
for that subset, peercam and aplay with every shared library they need (resolved through the
aarch64 multiarch directories, ELF NEEDED entries read with aarch64-linux-gnu-readelf), the static
v4l2-hold and h264-feed (tests/vm/*.c), out-of-tree modules (v4l2loopback, vicodec; with the
in-tree modules their modinfo "depends=" names) and the H.264
fixture h264-feed plays,
/usr/share/alsa, and a 440 Hz stereo tone for aplay. With --libcamera-root (Debian's libcamera
0.0.3 arm64 .debs extracted with `dpkg -x`): libcamera's V4L2 compatibility layer
(v4l2-compat.so), its IPA modules, IPA proxies and IPA data at the paths the library was built
with, and every library they need (found in DIR after the cross toolchain's directories).
"""

import argparse
import gzip
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
WANTED_MODULES = ["vivid", "snd-aloop", "virtio_mmio", "virtio_net"]
LIB_DIRS = ["/usr/aarch64-linux-gnu/lib", "/usr/lib/aarch64-linux-gnu", "/lib/aarch64-linux-gnu"]
EXTRA_LIB_DIRS: list[str] = []  # --libcamera-root's library directories, searched last


def modules(kernel_root: str, out_root: str, extra: list[str]) -> str:
    versions = os.listdir(os.path.join(kernel_root, "lib/modules"))
    if len(versions) != 1:
        sys.exit(f"expected one kernel version under {kernel_root}/lib/modules, found {versions}")
    kv = versions[0]
    src = os.path.join(kernel_root, "lib/modules", kv)
    dep_file = os.path.join(src, "modules.dep")
    if not os.path.exists(dep_file):
        # The .deb ships no modules.dep.
        subprocess.run(["depmod", "-b", kernel_root, kv], check=True)
    deps: dict[str, list[str]] = {}
    with open(dep_file) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    by_name = {}
    for path in deps:
        name = os.path.basename(path).split(".ko")[0]
        by_name[name] = path
        by_name[name.replace("-", "_")] = path
    needed: set[str] = set()
    # Out-of-tree modules (v4l2loopback, vicodec, …) bring the in-tree modules they depend on
    # (their .modinfo "depends=", e.g. v4l2-mem2mem for vicodec).
    extra_deps = []
    extra_names = {os.path.basename(ko).split(".ko")[0].replace("-", "_") for ko in extra}
    for ko in extra:
        out = subprocess.run(["modinfo", "-F", "depends", ko], capture_output=True, text=True, check=True).stdout
        extra_deps += [d for d in out.strip().split(",") if d and d.replace("-", "_") not in extra_names]
    for want in WANTED_MODULES + extra_deps:
        path = by_name.get(want) or by_name.get(want.replace("-", "_"))
        if not path:
            sys.exit(f"module {want} not in {dep_file}")
        stack = [path]
        while stack:
            p = stack.pop()
            if p in needed:
                continue
            needed.add(p)
            stack.extend(deps.get(p, []))
    dst = os.path.join(out_root, "lib/modules", kv)
    for p in needed:
        os.makedirs(os.path.dirname(os.path.join(dst, p)), exist_ok=True)
        shutil.copy2(os.path.join(src, p), os.path.join(dst, p))
    for ko in extra:
        os.makedirs(os.path.join(dst, "extra"), exist_ok=True)
        shutil.copy2(ko, os.path.join(dst, "extra", os.path.basename(ko)))
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if os.path.exists(os.path.join(src, f)):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
    subprocess.run(["depmod", "-b", out_root, kv], check=True)
    print(f"build_image: {len(needed)} modules for {kv}", file=sys.stderr)
    return kv


def needed_libs(elf: str) -> list[str]:
    out = subprocess.run(["aarch64-linux-gnu-readelf", "-d", elf], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]


def find_lib(name: str) -> str:
    for d in LIB_DIRS + EXTRA_LIB_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    sys.exit(f"shared library {name} not found in {LIB_DIRS} (is libasound2-dev:arm64 / libc6-arm64-cross installed?)")


def copy_with_libs(elf: str, dest: str, out_root: str) -> None:
    os.makedirs(os.path.dirname(os.path.join(out_root, dest)), exist_ok=True)
    shutil.copy2(elf, os.path.join(out_root, dest))
    libs_of(elf, out_root)


def libs_of(elf: str, out_root: str) -> None:
    """Copies every shared library `elf` needs (transitively) into out_root/lib."""
    todo, seen = [elf], set()
    while todo:
        for lib in needed_libs(todo.pop()):
            if lib in seen:
                continue
            seen.add(lib)
            src = os.path.realpath(find_lib(lib))
            shutil.copy2(src, os.path.join(out_root, "lib", lib))
            todo.append(src)
    # The program interpreter.
    ld = "ld-linux-aarch64.so.1"
    if not os.path.exists(os.path.join(out_root, "lib", ld)):
        shutil.copy2(os.path.realpath(find_lib(ld)), os.path.join(out_root, "lib", ld))


def libcamera(root: str, out_root: str) -> None:
    """libcamera's V4L2 compatibility layer, IPA modules / proxies / data and their libraries, at
    the paths Debian built them for (so no LIBCAMERA_* variables are needed in the guest)."""
    arch = "usr/lib/aarch64-linux-gnu"
    EXTRA_LIB_DIRS.extend(os.path.join(root, d) for d in (arch, "lib/aarch64-linux-gnu"))
    elves = []
    for rel in (f"{arch}/v4l2-compat.so", f"{arch}/libcamera", "usr/share/libcamera"):
        src = os.path.join(root, rel)
        if not os.path.exists(src):
            sys.exit(f"libcamera: {src} is missing (libcamera-v4l2 / libcamera-ipa extracted there?)")
        dst = os.path.join(out_root, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
            elves += [os.path.join(src, f) for f in os.listdir(src) if not f.endswith(".sign") and
                      os.path.isfile(os.path.join(src, f)) and open(os.path.join(src, f), "rb").read(4) == b"\x7fELF"]
        else:
            shutil.copy2(src, dst)
            elves.append(src)
    for e in elves:
        libs_of(e, out_root)
    print(f"build_image: libcamera from {root} ({len(elves)} ELF files)", file=sys.stderr)


def tone(path: str, hz: float = 440.0, secs: int = 10, rate: int = 48000, amplitude: float = 0.3) -> None:
    frames = []
    for i in range(rate * secs):
        v = int(amplitude * 32767 * math.sin(2 * math.pi * hz * i / rate))
        frames.append(struct.pack("<hh", v, v))
    with open(path, "wb") as f:
        f.write(b"".join(frames))


def cpio_newc(root: str, out_path: str) -> None:
    """Every file, directory and symlink under root, plus /dev/console, gzip'd."""
    ino = [100]

    def entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> bytes:
        ino[0] += 1
        nameb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{x:08x}" for x in (
            ino[0], mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0))
        out = hdr.encode() + nameb
        out += b"\0" * ((4 - len(out) % 4) % 4)
        out += data + b"\0" * ((4 - len(data) % 4) % 4)
        return out

    with gzip.open(out_path, "wb", compresslevel=1) as z:
        z.write(entry("dev", 0o40755, nlink=2))
        z.write(entry("dev/console", 0o20600, rdev=(5, 1)))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            for d in dirnames:
                rel = os.path.normpath(os.path.join(rel_dir, d))
                full = os.path.join(dirpath, d)
                if os.path.islink(full):
                    z.write(entry(rel, 0o120777, os.readlink(full).encode()))
                elif rel != "dev":
                    z.write(entry(rel, 0o40755, nlink=2))
            for fn in sorted(filenames):
                rel = os.path.normpath(os.path.join(rel_dir, fn))
                full = os.path.join(dirpath, fn)
                if os.path.islink(full):
                    z.write(entry(rel, 0o120777, os.readlink(full).encode()))
                else:
                    mode = 0o100755 if os.access(full, os.X_OK) else 0o100644
                    with open(full, "rb") as f:
                        z.write(entry(rel, mode, f.read()))
        z.write(entry("TRAILER!!!", 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel-root", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--aplay", required=True)
    ap.add_argument("--peercam", required=True)
    ap.add_argument("--hold", required=True, help="static aarch64 v4l2-hold (tests/vm/v4l2-hold.c)")
    ap.add_argument("--feed", required=True, help="static aarch64 h264-feed (tests/vm/h264-feed.c)")
    ap.add_argument("--extra-module", action="append", default=[], help="an out-of-tree .ko (v4l2loopback)")
    ap.add_argument("--h264", required=True, help="the H.264 stream h264-feed plays (/cam.h264)")
    ap.add_argument("--libcamera-root", help="Debian's libcamera .debs extracted (libcamera0.0.3, -v4l2, -ipa + libraries)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        for d in ("bin", "lib", "usr/bin", "usr/share", "etc", "proc", "sys", "tmp", "root"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy2(a.busybox, os.path.join(root, "bin/busybox"))
        os.symlink("busybox", os.path.join(root, "bin/sh"))
        shutil.copy2(os.path.join(HERE, "guest-init.sh"), os.path.join(root, "init"))
        os.chmod(os.path.join(root, "init"), 0o755)
        kv = modules(a.kernel_root, root, a.extra_module)
        copy_with_libs(a.peercam, "usr/bin/peercam", root)
        copy_with_libs(a.aplay, "usr/bin/aplay", root)
        shutil.copy2(a.hold, os.path.join(root, "usr/bin/v4l2-hold"))
        shutil.copy2(a.feed, os.path.join(root, "usr/bin/h264-feed"))
        shutil.copy2(a.h264, os.path.join(root, "cam.h264"))
        if a.libcamera_root:
            libcamera(a.libcamera_root, root)
        shutil.copytree("/usr/share/alsa", os.path.join(root, "usr/share/alsa"), symlinks=True)
        tone(os.path.join(root, "tone-440.raw"))
        cpio_newc(root, a.out)
    print(f"build_image: {a.out} ({os.path.getsize(a.out) // 1024} KiB), kernel {kv}", file=sys.stderr)


if __name__ == "__main__":
    main()
