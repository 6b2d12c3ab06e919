#!/usr/bin/env python3
"""Static checks of the BR2_EXTERNAL tree in buildroot/ (no Buildroot build needed).

    scripts/check-buildroot.py [--buildroot DIR] [--no-systemd]

Checks
  * tree: external.desc / Config.in / external.mk, every file they source or include exists;
  * defconfigs: every file or directory they reference through $(BR2_EXTERNAL_PEERCAM_PATH) exists;
    they enable systemd, alsa-lib, Wi-Fi (firmware + wpa_supplicant with WPA3, as peercam-firstboot
    writes SAE), an mDNS responder, peercam, the image tools; no eudev with systemd; the Pi 3 / 4 /
    Zero 2 W ones libcamera with its rpi/vc4 pipeline and V4L2 compatibility layer (and
    camera_auto_detect=1 in their config.txt); with --buildroot, those symbols exist there;
  * package/peercam: Config.in symbols, .mk variables all PEERCAM_-prefixed, cargo-package,
    PEERCAM_VERSION == Cargo.toml's version, files it installs from the source tree exist;
  * board: genimage.cfg.in well-formed (balanced braces, known sections/keys, images defined), its
    disk signature matches cmdline*.txt and post-build.sh's fstab PARTUUIDs; scripts parse (sh -n);
    boot-partition templates and the default config are valid TOML; preset file syntax;
  * the units (systemd/peercam.service, the overlay's) pass `systemd-analyze verify`.
With --buildroot DIR (a Buildroot source tree, e.g. 2026.02.3): also checks Buildroot-relative
paths in the defconfigs, that the board part of each defconfig still matches Buildroot's own
raspberrypi*_defconfig, runs Buildroot's utils/check-package on the tree, and compares the
lockfile's highest rust-version with Buildroot's Rust.
Prints "check-buildroot: N passed, M failed" and exits 1 on any failure.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT = os.path.join(ROOT, "buildroot")
BOARD = os.path.join(EXT, "board", "peercam")

# The Buildroot configs each peercam defconfig derives from.
UPSTREAM = {
    "peercam_rpi4_64_defconfig": "raspberrypi4_64_defconfig",
    "peercam_rpi3_64_defconfig": "raspberrypi3_64_defconfig",
    "peercam_zero2w_64_defconfig": "raspberrypizero2w_64_defconfig",
    "peercam_rpi5_defconfig": "raspberrypi5_defconfig",
}
# Boards whose CSI cameras Buildroot's libcamera supports (the rpi/vc4 pipeline: Unicam + the
# VideoCore ISP). The Pi 5 (CFE + PiSP) has no pipeline in Buildroot's libcamera.
LIBCAMERA_BOARDS = {"peercam_rpi4_64_defconfig", "peercam_rpi3_64_defconfig", "peercam_zero2w_64_defconfig"}
LIBCAMERA_SYMBOLS = ("BR2_PACKAGE_LIBCAMERA", "BR2_PACKAGE_LIBCAMERA_V4L2", "BR2_PACKAGE_LIBCAMERA_PIPELINE_RPI_VC4")
# Symbols the peercam defconfigs deliberately set differently from Buildroot's board defconfigs.
OVERRIDDEN = {
    "BR2_ROOTFS_POST_BUILD_SCRIPT", "BR2_ROOTFS_POST_IMAGE_SCRIPT", "BR2_PACKAGE_RPI_FIRMWARE_CONFIG_FILE",
    "BR2_PACKAGE_RPI_FIRMWARE_CMDLINE_FILE", "BR2_SYSTEM_DHCP", "BR2_TARGET_ROOTFS_EXT2_SIZE",
    "BR2_GLOBAL_PATCH_DIR",
}
# Rust of the Buildroot release README.md ("The SD-card image") recommends (2026.05.x: rust-bin 1.96.1; the 2026.02.x
# LTS has 1.88.0); used for the MSRV check when no --buildroot is given.
DEFAULT_BUILDROOT_RUST = "1.96.1"

passed = failed = warned = 0


def ok(msg):
    global passed
    passed += 1
    print(f"  ok: {msg}")


def fail(msg):
    global failed
    failed += 1
    print(f"  FAIL: {msg}")


def warn(msg):
    global warned
    warned += 1
    print(f"  WARN: {msg}")


def check(cond, msg):
    ok(msg) if cond else fail(msg)
    return cond


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, ROOT)


def parse_defconfig(path):
    values = {}
    for line in read(path).splitlines():
        m = re.match(r"^(BR2_\w+)=(.*)$", line)
        if m:
            v = m.group(2)
            values[m.group(1)] = v[1:-1] if v.startswith('"') and v.endswith('"') else v
            continue
        m = re.match(r"^# (BR2_\w+) is not set$", line)
        if m:
            values[m.group(1)] = None
    return values


def expand_ext(token):
    return token.replace("$(BR2_EXTERNAL_PEERCAM_PATH)", EXT)


def cargo_package():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f).get("package", {})


# ------------------------------------------------------------------------------------------------
def check_tree():
    print("== external tree")
    desc = read(os.path.join(EXT, "external.desc"))
    check(re.search(r"^name:\s*PEERCAM\s*$", desc, re.M) is not None, "external.desc: name: PEERCAM")
    check(re.search(r"^desc:\s*\S", desc, re.M) is not None, "external.desc: desc:")
    for line in read(os.path.join(EXT, "Config.in")).splitlines():
        m = re.match(r'^\s*(?:o?source|rsource)\s+"([^"]+)"', line)
        if m:
            p = m.group(1).replace("$BR2_EXTERNAL_PEERCAM_PATH", EXT)
            check(os.path.isfile(p), f"Config.in sources {m.group(1)} (exists)")
    mk = read(os.path.join(EXT, "external.mk"))
    check("$(BR2_EXTERNAL_PEERCAM_PATH)/package/*/*.mk" in mk, "external.mk includes package/*/*.mk")
    pkgs = [d for d in os.listdir(os.path.join(EXT, "package")) if os.path.isdir(os.path.join(EXT, "package", d))]
    cfg = read(os.path.join(EXT, "Config.in"))
    for p in pkgs:
        check(f"package/{p}/Config.in" in cfg, f"Config.in sources package/{p}/Config.in")
        check(os.path.isfile(os.path.join(EXT, "package", p, f"{p}.mk")), f"package/{p}/{p}.mk exists")


def check_package():
    print("== package/peercam")
    pdir = os.path.join(EXT, "package", "peercam")
    cin = read(os.path.join(pdir, "Config.in"))
    check(re.search(r"^config BR2_PACKAGE_PEERCAM$", cin, re.M) is not None, "Config.in: config BR2_PACKAGE_PEERCAM")
    check("depends on BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS" in cin, "Config.in: depends on BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS")
    check("select BR2_PACKAGE_HOST_RUSTC" in cin, "Config.in: select BR2_PACKAGE_HOST_RUSTC")
    check("select BR2_PACKAGE_ALSA_LIB" in cin, "Config.in: select BR2_PACKAGE_ALSA_LIB")

    mk = read(os.path.join(pdir, "peercam.mk"))
    lines = mk.splitlines()
    check(lines[:5] == ["#" * 80, "#", "# peercam", "#", "#" * 80], ".mk starts with Buildroot's header block")
    check("$(eval $(cargo-package))" in mk, ".mk uses $(eval $(cargo-package))")
    names = set(re.findall(r"^([A-Za-z0-9_]+)\s*(?:\+=|:=|\?=|=)", mk, re.M))
    names |= set(re.findall(r"^define\s+([A-Za-z0-9_]+)", mk, re.M))
    allowed_globals = {"BR_NO_CHECK_HASH_FOR"}
    bad = sorted(n for n in names if not n.startswith("PEERCAM_") and n not in allowed_globals)
    check(not bad, f".mk variables all PEERCAM_-prefixed ({len(names)} variables){': ' + ', '.join(bad) if bad else ''}")
    for var in ("PEERCAM_VERSION", "PEERCAM_SITE", "PEERCAM_LICENSE", "PEERCAM_DEPENDENCIES"):
        check(var in names, f".mk defines {var}")
    m = re.search(r"^PEERCAM_VERSION\s*=\s*(\S+)", mk, re.M)
    pkg = cargo_package()
    check(m is not None and m.group(1) == pkg.get("version"),
          f"PEERCAM_VERSION ({m.group(1) if m else None}) == Cargo.toml version ({pkg.get('version')})")
    lic = re.search(r"^PEERCAM_LICENSE\s*=\s*(.*)$", mk, re.M)
    if pkg.get("license"):
        check(lic is not None and lic.group(1).strip() == pkg["license"], f"PEERCAM_LICENSE == Cargo.toml license ({pkg['license']})")
    else:
        warn("Cargo.toml has no license field: PEERCAM_LICENSE is a placeholder")
    deps = re.search(r"^PEERCAM_DEPENDENCIES\s*=((?:.*\\\n)*.*)$", mk, re.M)
    deps = deps.group(1) if deps else ""
    check("alsa-lib" in deps, "PEERCAM_DEPENDENCIES has alsa-lib")
    check("host-clang" in deps, "PEERCAM_DEPENDENCIES has host-clang (bindgen for v4l2-sys-mit)")
    for f in sorted(set(re.findall(r"\$\(@D\)/([A-Za-z0-9_./-]+)", mk))):
        check(os.path.exists(os.path.join(ROOT, f)), f".mk installs {f} from the source tree (exists)")
    for f in sorted(set(re.findall(r"\$\(PEERCAM_PKGDIR\)/?([A-Za-z0-9_./-]+)", mk))):
        check(os.path.exists(os.path.join(pdir, f)), f".mk uses package/peercam/{f} (exists)")
    check(os.path.isfile(os.path.join(ROOT, "Cargo.lock")), "Cargo.lock exists (cargo build --locked)")


def check_defconfigs(buildroot):
    overlay = os.path.join(BOARD, "rootfs-overlay")
    firstboot = read(os.path.join(overlay, "usr/libexec/peercam/peercam-firstboot"))
    writes_sae = "SAE" in firstboot
    for name in sorted(os.listdir(os.path.join(EXT, "configs"))):
        path = os.path.join(EXT, "configs", name)
        print(f"== configs/{name}")
        v = parse_defconfig(path)
        # referenced files
        for key, val in v.items():
            if not val:
                continue
            for tok in val.split():
                if "$(BR2_EXTERNAL_PEERCAM_PATH)" in tok:
                    p = expand_ext(tok)
                    check(os.path.exists(p), f"{key}: {tok.replace('$(BR2_EXTERNAL_PEERCAM_PATH)', '$(EXT)')} exists")
                elif "$(" not in tok and re.match(r"^(board|configs|package|support|fs|linux|system)/", tok):
                    if buildroot:
                        check(os.path.exists(os.path.join(buildroot, tok)), f"{key}: {tok} exists in Buildroot")
                    else:
                        print(f"  (not checked without --buildroot: {key}={tok})")
        for key in ("BR2_ROOTFS_POST_BUILD_SCRIPT", "BR2_ROOTFS_POST_IMAGE_SCRIPT"):
            for tok in (v.get(key) or "").split():
                p = expand_ext(tok)
                if os.path.exists(p):
                    check(os.access(p, os.X_OK), f"{key}: {os.path.basename(p)} is executable")
        want = {
            "BR2_INIT_SYSTEMD": "y", "BR2_PACKAGE_ALSA_LIB": "y", "BR2_PACKAGE_PEERCAM": "y",
            "BR2_PACKAGE_WPA_SUPPLICANT": "y", "BR2_PACKAGE_WPA_SUPPLICANT_NL80211": "y",
            "BR2_PACKAGE_WIRELESS_REGDB": "y", "BR2_PACKAGE_SYSTEMD_NETWORKD": "y",
            "BR2_TARGET_ROOTFS_EXT2_4": "y", "BR2_PACKAGE_HOST_GENIMAGE": "y",
            "BR2_PACKAGE_HOST_DOSFSTOOLS": "y", "BR2_PACKAGE_HOST_MTOOLS": "y", "BR2_PACKAGE_RPI_FIRMWARE": "y",
            "BR2_LINUX_KERNEL": "y",
        }
        for key, val in want.items():
            check(v.get(key) == val, f"{key}={val}")
        check(v.get("BR2_PACKAGE_BRCMFMAC_SDIO_FIRMWARE_RPI_WIFI") == "y" or v.get("BR2_PACKAGE_LINUX_FIRMWARE_BRCM_BCM43XXX") == "y",
              "Wi-Fi firmware (brcmfmac-sdio-firmware-rpi-wifi or linux-firmware bcm43xx)")
        if writes_sae:
            check(v.get("BR2_PACKAGE_WPA_SUPPLICANT_WPA3") == "y", "BR2_PACKAGE_WPA_SUPPLICANT_WPA3=y (firstboot writes key_mgmt ... SAE)")
        mdns_resolved = v.get("BR2_PACKAGE_SYSTEMD_RESOLVED") == "y" and "MulticastDNS=yes" in read(
            os.path.join(overlay, "etc/systemd/resolved.conf.d/peercam-mdns.conf"))
        check(mdns_resolved or v.get("BR2_PACKAGE_AVAHI_DAEMON") == "y", "mDNS responder (systemd-resolved MulticastDNS=yes, or avahi)")
        check(v.get("BR2_ROOTFS_DEVICE_CREATION_DYNAMIC_EUDEV") is None, "no eudev (systemd brings udev)")
        # CSI camera modules through libcamera (src/capture/libcamera/README.md): the boards with a
        # Buildroot pipeline get it, with the V4L2 compatibility layer peercam preloads.
        if name in LIBCAMERA_BOARDS:
            for key in LIBCAMERA_SYMBOLS:
                check(v.get(key) == "y", f"{key}=y (CSI cameras through libcamera)")
            if buildroot:
                conf = read(os.path.join(buildroot, "package", "libcamera", "Config.in")) if os.path.isfile(
                    os.path.join(buildroot, "package", "libcamera", "Config.in")) else ""
                for key in LIBCAMERA_SYMBOLS:
                    check(re.search(rf"^(menu)?config {key}$", conf, re.M) is not None, f"{key} exists in Buildroot's package/libcamera/Config.in")
            config_txt = expand_ext(v.get("BR2_PACKAGE_RPI_FIRMWARE_CONFIG_FILE") or "")
            if os.path.isfile(config_txt):
                check(re.search(r"^camera_auto_detect=1", read(config_txt), re.M) is not None,
                      f"{os.path.basename(config_txt)}: camera_auto_detect=1 (the sensor's overlay loads)")
        check("$(BR2_EXTERNAL_PEERCAM_PATH)/board/peercam/rootfs-overlay" in (v.get("BR2_ROOTFS_OVERLAY") or "").split(), "BR2_ROOTFS_OVERLAY has the peercam overlay")
        extra = (v.get("BR2_PACKAGE_RPI_FIRMWARE_EXTRA_FILES") or "").split()
        for f in ("peercam.toml", "wifi.txt"):
            check(f"$(BR2_EXTERNAL_PEERCAM_PATH)/board/peercam/boot/{f}" in extra, f"boot partition gets board/peercam/boot/{f} (RPI_FIRMWARE_EXTRA_FILES)")
        if v.get("BR2_DOWNLOAD_FORCE_CHECK_HASHES") == "y":
            check("$(BR2_EXTERNAL_PEERCAM_PATH)/board/peercam/patches" in (v.get("BR2_GLOBAL_PATCH_DIR") or "").split(),
                  "BR2_GLOBAL_PATCH_DIR has board/peercam/patches (peercam.hash, needed with FORCE_CHECK_HASHES)")
        cmdline = expand_ext(v.get("BR2_PACKAGE_RPI_FIRMWARE_CMDLINE_FILE") or "")
        config = expand_ext(v.get("BR2_PACKAGE_RPI_FIRMWARE_CONFIG_FILE") or "")
        if os.path.isfile(config):
            check(re.search(r"^kernel=\S+", read(config), re.M) is not None, f"{os.path.basename(config)} has kernel= (post-image.sh needs it)")
            if v.get("BR2_aarch64") == "y" and "start_file" in read(config):
                check(re.search(r"^arm_64bit=1", read(config), re.M) is not None, f"{os.path.basename(config)}: arm_64bit=1")
        if os.path.isfile(cmdline):
            check("root=PARTUUID=" in read(cmdline), f"{os.path.basename(cmdline)}: root=PARTUUID=")
        # drift against Buildroot's own board defconfig
        if buildroot and name in UPSTREAM:
            up_path = os.path.join(buildroot, "configs", UPSTREAM[name])
            if check(os.path.isfile(up_path), f"Buildroot has configs/{UPSTREAM[name]}"):
                up = parse_defconfig(up_path)
                drift = [k for k, val in up.items() if k not in OVERRIDDEN and v.get(k, "<absent>") != val]
                check(not drift, f"board part matches Buildroot's {UPSTREAM[name]}{': differs in ' + ', '.join(drift) if drift else ''}")
                gp = (up.get("BR2_GLOBAL_PATCH_DIR") or "").split()
                check(all(t in (v.get("BR2_GLOBAL_PATCH_DIR") or "").split() for t in gp), "keeps Buildroot's BR2_GLOBAL_PATCH_DIR entries")


def check_genimage():
    print("== board/peercam/genimage.cfg.in")
    text = read(os.path.join(BOARD, "genimage.cfg.in"))
    body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#") or l.strip() == "#BOOT_FILES#")
    depth, ok_balance = 0, True
    for ch in body:
        depth += ch == "{"
        depth -= ch == "}"
        ok_balance &= depth >= 0
    check(ok_balance and depth == 0, "balanced braces")
    check("#BOOT_FILES#" in text and re.search(r"files\s*=\s*\{\s*\n#BOOT_FILES#\s*\n\s*\}", text) is not None,
          "#BOOT_FILES# placeholder inside vfat files = { }")
    sections = {"image", "vfat", "ext4", "ext2", "ext3", "hdimage", "partition", "file", "tar", "squashfs", "cpio"}
    keys = {"size", "label", "files", "use-mke2fs", "empty", "partition-table-type", "disk-signature",
            "partition-type", "bootable", "image", "offset", "align", "autoresize", "features", "extraargs",
            "mountpoint", "in-partition-table", "partition-uuid", "partition-type-uuid", "fs-timestamp"}
    unknown = []
    images, refs = set(), set()
    for line in body.splitlines():
        s = line.strip()
        if not s or s == "#BOOT_FILES#" or s == "}" or s.startswith('"'):
            continue
        if re.match(r"^files\s*=\s*\{$", s):
            continue
        m = re.match(r"^([a-z0-9-]+)\s+(\S+)?\s*\{$", s) or re.match(r"^([a-z0-9-]+)\s*\{$", s)
        if m:
            if m.group(1) not in sections:
                unknown.append(m.group(1))
            if m.group(1) == "image":
                images.add(m.group(2))
            continue
        m = re.match(r"^([a-z0-9-]+)\s*=\s*(.*)$", s)
        if m:
            if m.group(1) not in keys:
                unknown.append(m.group(1))
            if m.group(1) == "image":
                refs.add(m.group(2).strip('"'))
            continue
        unknown.append(s)
    check(not unknown, f"known sections and keys only{': ' + ', '.join(unknown) if unknown else ''}")
    missing = sorted(r for r in refs if r not in images and r != "rootfs.ext4")
    check(not missing, f"partitions use defined images (or Buildroot's rootfs.ext4){': ' + ', '.join(missing) if missing else ''}")
    check("sdcard.img" in images, "defines sdcard.img")
    sig = re.search(r"disk-signature\s*=\s*0x([0-9a-fA-F]{8})", text)
    if check(sig is not None, "fixed MBR disk-signature"):
        s = sig.group(1).lower()
        for f in sorted(os.listdir(BOARD)):
            if f.startswith("cmdline") and f.endswith(".txt"):
                check(f"root=PARTUUID={s}-02" in read(os.path.join(BOARD, f)), f"{f}: root=PARTUUID={s}-02")
        pb = read(os.path.join(BOARD, "post-build.sh"))
        check(f"DISK_ID={s}" in pb, f"post-build.sh fstab uses PARTUUID {s}-NN")
    nparts = len(re.findall(r"^\s*partition\s+\S+\s*\{", text, re.M))
    check(nparts == 3, f"3 partitions (boot, rootfs, data): {nparts}")


def check_scripts_and_files():
    print("== board files")
    for f in ("post-build.sh", "post-image.sh", "rootfs-overlay/usr/libexec/peercam/peercam-firstboot"):
        p = os.path.join(BOARD, f)
        check(os.access(p, os.X_OK), f"{f} is executable")
        shell = "bash" if read(p).startswith("#!/usr/bin/env bash") else "sh"
        r = subprocess.run([shell, "-n", p], capture_output=True, text=True)
        check(r.returncode == 0, f"{f} parses ({shell} -n){': ' + r.stderr.strip() if r.returncode else ''}")
        if shutil.which("shellcheck"):
            r = subprocess.run(["shellcheck", "-S", "error", p], capture_output=True, text=True)
            check(r.returncode == 0, f"{f}: shellcheck -S error{': ' + r.stdout.strip() if r.returncode else ''}")
    for f, must_have_password in (("boot/peercam.toml", True), ("rootfs-overlay/etc/peercam/peercam.toml", False)):
        try:
            with open(os.path.join(BOARD, f), "rb") as fh:
                d = tomllib.load(fh)
            ok(f"{f} is valid TOML")
            if must_have_password:
                check(d.get("auth", {}).get("password") == "", f"{f}: [auth] password = \"\" for the user to fill in")
            else:
                check("password" not in d.get("auth", {}), f"{f}: no plaintext password")
        except Exception as e:  # noqa: BLE001
            fail(f"{f}: {e}")
    wifi = read(os.path.join(BOARD, "boot/wifi.txt"))
    for k in ("SSID", "PASSPHRASE", "COUNTRY"):
        check(re.search(rf"^{k}=", wifi, re.M) is not None, f"boot/wifi.txt has {k}=")
    preset = os.path.join(BOARD, "rootfs-overlay/usr/lib/systemd/system-preset/40-peercam.preset")
    bad = [l for l in read(preset).splitlines()
           if l.strip() and not l.startswith("#") and not re.match(r"^(enable|disable)\s+\S+\.(service|socket|timer|target|path|mount)(\s+\S+)*$", l)]
    check(not bad, f"preset syntax{': ' + '; '.join(bad) if bad else ''}")
    text = read(preset)
    for u in ("peercam.service", "peercam-firstboot.service", "wpa_supplicant@.service"):
        check(re.search(rf"^enable\s+{re.escape(u)}", text, re.M) is not None, f"preset enables {u}")


def check_units(use_systemd):
    print("== units")
    if not use_systemd or not shutil.which("systemd-analyze"):
        warn("systemd-analyze not available: units not verified")
        return
    with tempfile.TemporaryDirectory() as tmp:
        stub = os.path.join(tmp, "exe")
        with open(stub, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(stub, 0o755)
        units = [os.path.join(ROOT, "systemd", "peercam.service")]
        udir = os.path.join(BOARD, "rootfs-overlay", "usr", "lib", "systemd", "system")
        units += [os.path.join(udir, u) for u in sorted(os.listdir(udir))]
        for u in units:
            text = re.sub(r"^(Exec\w+=)[-@:+!]*(/\S+)", lambda m: m.group(1) + stub, read(u), flags=re.M)
            dst = os.path.join(tmp, os.path.basename(u))
            with open(dst, "w") as f:
                f.write(text)
            r = subprocess.run(["systemd-analyze", "verify", dst], capture_output=True, text=True)
            out = (r.stdout + r.stderr).strip()
            check(r.returncode == 0 and os.path.basename(u) not in out, f"systemd-analyze verify {rel(u)}{': ' + out if out else ''}")


def check_buildroot_tools(buildroot):
    print("== Buildroot's utils/check-package")
    cp = os.path.join(buildroot, "utils", "check-package")
    if not os.path.isfile(cp):
        warn(f"{cp} not found")
        return
    files = []
    for d, _, fs in os.walk(EXT):
        if "rootfs-overlay" in d:
            continue
        files += [os.path.join(d, f) for f in fs if f.endswith((".mk", "Config.in", ".hash", "_defconfig", "external.desc"))]
    r = subprocess.run([sys.executable, cp, "-b"] + sorted(files), capture_output=True, text=True, cwd=buildroot)
    out = (r.stdout + r.stderr).strip()
    if "ModuleNotFoundError" in out:
        warn(f"check-package could not run ({out.splitlines()[-1]}; pip install python-magic flake8)")
        return
    warnings = [l for l in out.splitlines() if not re.match(r"^\d+ lines processed|^\d+ warnings generated", l)]
    check(r.returncode == 0 and not warnings, f"check-package -b on {len(files)} files{': ' + ' | '.join(warnings) if warnings else ''}")


def check_msrv(buildroot):
    print("== Rust version")
    rust = DEFAULT_BUILDROOT_RUST
    src = f"Buildroot 2026.05.x's {rust}"
    if buildroot:
        p = os.path.join(buildroot, "package", "rust-bin", "rust-bin.mk")
        if os.path.isfile(p):
            m = re.search(r"^RUST_BIN_VERSION\s*=\s*(\S+)", read(p), re.M)
            if m:
                rust, src = m.group(1), f"{buildroot}: rust-bin {m.group(1)}"
    r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked", "--offline"],
                       capture_output=True, text=True, cwd=ROOT) if shutil.which("cargo") else None
    if not r or r.returncode != 0:
        warn("cargo metadata --offline failed (crates not fetched?): MSRV not checked")
        return
    meta = json.loads(r.stdout)

    def vt(s):
        return tuple(int(x) for x in re.findall(r"\d+", s)[:3]) + (0,) * (3 - len(re.findall(r"\d+", s)[:3]))

    need = [(vt(p["rust_version"]), p["name"], p["version"], p["rust_version"]) for p in meta["packages"] if p.get("rust_version")]
    need.sort(reverse=True)
    if not need:
        return
    top = need[0]
    too_new = [f"{n} {v} (rust {rv})" for t, n, v, rv in need if t > vt(rust)]
    if too_new:
        warn(f"{len(too_new)} locked crates need a newer Rust than {src}: {', '.join(too_new[:6])}"
             f"{' ...' if len(too_new) > 6 else ''} — set rust-version in Cargo.toml and re-lock, or use a newer Buildroot")
    else:
        ok(f"highest rust-version in Cargo.lock {top[3]} ({top[1]}) <= {src}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--buildroot", help="a Buildroot source tree for the extra checks")
    ap.add_argument("--no-systemd", action="store_true", help="skip systemd-analyze verify")
    a = ap.parse_args()
    br = os.path.abspath(a.buildroot) if a.buildroot else None
    check_tree()
    check_package()
    check_defconfigs(br)
    check_genimage()
    check_scripts_and_files()
    check_units(not a.no_systemd)
    if br:
        check_buildroot_tools(br)
    check_msrv(br)
    print(f"check-buildroot: {passed} passed, {failed} failed" + (f" ({warned} warnings)" if warned else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
