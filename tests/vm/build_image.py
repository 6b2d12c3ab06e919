#!/usr/bin/env python3
"""Builds the rig-3 initramfs (gzip'd newc cpio) without root, cpio or mknod.

  build_image.py --kernel-root DIR --busybox FILE --aplay FILE --peercam FILE --hold FILE --feed FILE
                 --extra-module KO --h264 FILE --out FILE

DIR is a Debian arm64 linux-image .deb extracted with `dpkg -x` (lib/modules/<version>/...).
Puts in: busybox (+ /init = tests/vm/guest-init.sh), the modules vivid, snd-aloop, virtio_mmio,
virtio_net with everything they depend on (from `depmod -b`'s modules.dep) and a modules.dep
for that subset, peercam and aplay with every shared library they need (resolved through the
aarch64 multiarch directories, ELF NEEDED entries read with aarch64-linux-gnu-readelf), the static
v4l2-hold and h264-feed (tests/vm/*.c), out-of-tree modules (v4l2loopback) and the H.264
fixture h264-feed plays,
/usr/share/alsa, and a 440 Hz stereo tone for aplay.
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
    for want in WANTED_MODULES:
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
    for d in LIB_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    sys.exit(f"shared library {name} not found in {LIB_DIRS} (is libasound2-dev:arm64 / libc6-arm64-cross installed?)")


def copy_with_libs(elf: str, dest: str, out_root: str) -> None:
    os.makedirs(os.path.dirname(os.path.join(out_root, dest)), exist_ok=True)
    shutil.copy2(elf, os.path.join(out_root, dest))
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
        shutil.copytree("/usr/share/alsa", os.path.join(root, "usr/share/alsa"), symlinks=True)
        tone(os.path.join(root, "tone-440.raw"))
        cpio_newc(root, a.out)
    print(f"build_image: {a.out} ({os.path.getsize(a.out) // 1024} KiB), kernel {kv}", file=sys.stderr)


if __name__ == "__main__":
    main()
