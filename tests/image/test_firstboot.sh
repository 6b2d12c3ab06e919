#!/usr/bin/env bash
# Tests buildroot/board/peercam/rootfs-overlay/usr/libexec/peercam/peercam-firstboot against a
# temporary directory standing for the FAT boot partition and a temporary root filesystem.
#
# `peercam hash-password`: the real binary (target/{release,debug}/peercam or $PEERCAM_BIN) is used
# when it has that subcommand; otherwise a stub that prints a fake "$argon2id$..." string (the test
# says which). The script is run by /bin/sh and, when installed, by busybox sh (the image's shell).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"
BOARD="$ROOT_DIR/buildroot/board/peercam"
SCRIPT="$BOARD/rootfs-overlay/usr/libexec/peercam/peercam-firstboot"

PASSED=0; FAILED=0
ok()   { PASSED=$((PASSED + 1)); echo "  ok: $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "  FAIL: $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- hash-password provider ------------------------------------------------------------------
REAL_BIN=""
for c in "${PEERCAM_BIN:-}" "$ROOT_DIR/target/release/peercam" "$ROOT_DIR/target/debug/peercam"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if out="$(printf 'probe-password' | timeout 60 "$c" hash-password 2>/dev/null)" && [[ "$out" == '$argon2'* ]]; then
        REAL_BIN="$c"; break
    fi
done
STUB="$WORK/stub-peercam"
cat > "$STUB" <<'EOF'
#!/bin/sh
# stub `peercam hash-password`: records what it was given, prints a PHC-shaped string
[ "$1" = hash-password ] || exit 2
cat > "${STUB_RECORD:?}"
[ -n "${STUB_FAIL:-}" ] && exit 1
printf '$argon2id$v=19$m=19456,t=2,p=1$c3R1YnNhbHQ$%s\n' "$(sha256sum < "$STUB_RECORD" | cut -c1-43)"
EOF
chmod +x "$STUB"
if [ -n "$REAL_BIN" ]; then
    echo "hash-password: real binary $REAL_BIN"
    HASHER="$REAL_BIN"
else
    echo "hash-password: STUB (no peercam binary with a working 'hash-password' subcommand found)"
    HASHER="$STUB"
fi

# the image's default config must be accepted by the binary it ships with (one that has
# hash-password, i.e. the [auth]/TLS settings the image relies on)
if [ -n "$REAL_BIN" ]; then
    check "peercam check-config accepts rootfs-overlay/etc/peercam/peercam.toml" \
        bash -c '"$1" check-config --config "$2" > /dev/null 2>&1' _ "$REAL_BIN" "$BOARD/rootfs-overlay/etc/peercam/peercam.toml"
else
    echo "(default config not checked with check-config: no binary with hash-password)"
fi

SHELLS=(/bin/sh)
if command -v busybox >/dev/null 2>&1; then SHELLS+=("busybox sh"); else echo "(busybox not installed: testing with /bin/sh only)"; fi

PASSWORD='pa ss"wo\rd ünï'          # spaces, a quote, a backslash, UTF-8
PASSWORD_TOML='pa ss\"wo\\rd ünï'     # the same, as a TOML basic string body
SSID='Home Net '                      # trailing space kept by the quotes
PASSPHRASE='correct "horse" battery'

setup_case() {   # $1 = case dir; fresh boot partition from the shipped templates + user edits
    local d="$1"
    mkdir -p "$d/boot" "$d/root"
    PW="$PASSWORD_TOML" awk '/^password = ""$/ { print "password = \"" ENVIRON["PW"] "\""; next }
        /^width = 1280$/ { print "width = 640"; next } { print }' "$BOARD/boot/peercam.toml" > "$d/boot/peercam.toml"
    grep -qF "password = \"$PASSWORD_TOML\"" "$d/boot/peercam.toml" || { echo "test setup failed"; exit 1; }
    # as a Windows editor would save it: CRLF
    sed -e "s|^SSID=\$|SSID=\"$SSID\"|" -e "s|^PASSPHRASE=\$|PASSPHRASE=$PASSPHRASE|" \
        -e 's|^COUNTRY=$|COUNTRY=de|' -e 's|^HOSTNAME=$|HOSTNAME=nursery-cam|' \
        "$BOARD/boot/wifi.txt" | sed 's/$/\r/' > "$d/boot/wifi.txt"
}

run_fb() {   # $1 = case dir, $2 = shell; extra env from the caller
    local d="$1" sh="$2"
    PEERCAM_BOOT_DIR="$d/boot" PEERCAM_ROOT="$d/root" PEERCAM_BIN="$HASHER" \
        PEERCAM_GROUP="$(id -gn)" STUB_RECORD="$d/stub-input" TMPDIR="$d" \
        $sh "$SCRIPT" > "$d/log" 2>&1
}

toml_value() {   # file table key -> value (python tomllib), or "<invalid>" / "<absent>"
    python3 - "$@" <<'EOF'
import sys, tomllib
try:
    d = tomllib.load(open(sys.argv[1], "rb"))
except Exception as e:
    print("<invalid>", e); sys.exit(0)
print(d.get(sys.argv[2], {}).get(sys.argv[3], "<absent>"))
EOF
}

mode_of() { stat -c %a "$1"; }
# true when neither the TOML-escaped nor the decoded password is in the file(s)
no_plaintext() { ! grep -rqF -e 'ss\"wo' -e 'ss"wo' -e 'wo\rd' "$@"; }
hexof() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }

for sh in "${SHELLS[@]}"; do
    echo "== shell: $sh"
    C="$WORK/case-${sh// /-}"; C="${C//\//_}"; C="$WORK/$(basename "$C")"
    setup_case "$C"
    if run_fb "$C" "$sh"; then ok "first boot import exits 0"; else bad "first boot import failed: $(cat "$C/log")"; fi

    ETC="$C/root/etc/peercam/peercam.toml"
    check "config copied to /etc/peercam/peercam.toml" test -f "$ETC"
    check "config mode 0640" test "$(mode_of "$ETC")" = 640
    check "config is valid TOML" test "$(toml_value "$ETC" video width)" = 640
    check "other settings kept (video.source)" test "$(toml_value "$ETC" video source)" = auto
    HASH="$(toml_value "$ETC" auth password_hash)"
    check "password hashed (starts with \$argon2): $HASH" test "${HASH#\$argon2}" != "$HASH"
    check "no plaintext password key in /etc config" test "$(toml_value "$ETC" auth password)" = "<absent>"
    check "plaintext not anywhere in /etc config" no_plaintext "$ETC"
    if [ -n "$REAL_BIN" ]; then
        check "peercam check-config accepts the imported config" \
            bash -c '"$1" check-config --config "$2" > /dev/null 2>&1' _ "$REAL_BIN" "$ETC"
    fi
    if [ "$HASHER" = "$STUB" ]; then
        check "hash-password got the exact decoded password on stdin (no newline)" \
            test "$(cat "$C/stub-input")" = "$PASSWORD" -a "$(wc -c < "$C/stub-input")" -eq "$(printf '%s' "$PASSWORD" | wc -c)"
    fi

    check "boot peercam.toml removed" test ! -e "$C/boot/peercam.toml"
    check "boot peercam.toml.applied left" test -f "$C/boot/peercam.toml.applied"
    check "boot copy has no password" test "$(toml_value "$C/boot/peercam.toml.applied" auth password)" = "<absent>"
    check "plaintext password gone from the boot partition" no_plaintext "$C/boot"
    check "plaintext Wi-Fi passphrase gone from the boot partition" bash -c '! grep -rqF -- "horse" "$1"' _ "$C/boot"

    WPA="$C/root/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
    check "wpa_supplicant-wlan0.conf written" test -f "$WPA"
    check "wpa conf mode 0600" test "$(mode_of "$WPA")" = 600
    check "ssid (hex, trailing space kept)" grep -qx "	ssid=$(hexof "$SSID")" "$WPA"
    check "psk quoted passphrase" grep -qxF "	psk=\"$PASSPHRASE\"" "$WPA"
    check "WPA2+WPA3 key management" grep -qx "	key_mgmt=WPA-PSK WPA-PSK-SHA256 SAE" "$WPA"
    check "country upper-cased" grep -qx "country=DE" "$WPA"
    check "no CR in wpa conf" bash -c '! grep -q $'"'"'\r'"'"' "$1"' _ "$WPA"
    if command -v wpa_supplicant >/dev/null 2>&1; then
        check "wpa_supplicant parses the file" bash -c 'wpa_supplicant -c "$1" -i none -D none -dd 2>&1 | grep -q "Reading configuration file" && ! wpa_supplicant -c "$1" -i lo -D none 2>&1 | grep -qi "failed to parse\|invalid"' _ "$WPA"
    fi
    check "hostname written" test "$(cat "$C/root/etc/hostname")" = nursery-cam
    check "wifi.txt removed, wifi.txt.applied left" test ! -e "$C/boot/wifi.txt" -a -f "$C/boot/wifi.txt.applied"
    check "wifi.txt.applied keeps SSID" grep -q '^SSID="Home Net "' "$C/boot/wifi.txt.applied"

    # second boot: nothing to import, nothing changes
    cp "$ETC" "$C/etc.before"
    if run_fb "$C" "$sh"; then ok "second boot exits 0"; else bad "second boot failed: $(cat "$C/log")"; fi
    check "second boot leaves the config alone" cmp -s "$ETC" "$C/etc.before"

    # re-apply the edited .applied file with an empty password: keeps the current hash
    sed 's|^width = 640|width = 320|' "$C/boot/peercam.toml.applied" > "$C/boot/peercam.toml"
    rm "$C/boot/peercam.toml.applied"
    if run_fb "$C" "$sh"; then ok "re-import exits 0"; else bad "re-import failed: $(cat "$C/log")"; fi
    check "re-import applied the new setting" test "$(toml_value "$ETC" video width)" = 320
    check "re-import without a password keeps the hash" test "$(toml_value "$ETC" auth password_hash)" = "$HASH"

    # a failing hash-password leaves everything on the boot partition untouched
    F="$C-fail"; setup_case "$F"
    cp "$F/boot/peercam.toml" "$F/orig.toml"
    if STUB_FAIL=1 PEERCAM_BOOT_DIR="$F/boot" PEERCAM_ROOT="$F/root" PEERCAM_BIN="$STUB" \
        PEERCAM_GROUP="$(id -gn)" STUB_RECORD="$F/stub-input" TMPDIR="$F" $sh "$SCRIPT" > "$F/log" 2>&1; then
        bad "hash-password failure must fail the import"
    else
        ok "hash-password failure fails the import"
    fi
    check "failed import keeps boot peercam.toml intact" cmp -s "$F/boot/peercam.toml" "$F/orig.toml"
    check "failed import writes no /etc config" test ! -e "$F/root/etc/peercam/peercam.toml"

    # open network, raw PSK, bad country
    O="$C-open"; mkdir -p "$O/boot" "$O/root"
    printf 'SSID=cafe\nPASSPHRASE=\nCOUNTRY=FR\n' > "$O/boot/wifi.txt"
    run_fb "$O" "$sh" && check "open network: key_mgmt=NONE" grep -qx "	key_mgmt=NONE" "$O/root/etc/wpa_supplicant/wpa_supplicant-wlan0.conf" || bad "open network import failed: $(cat "$O/log")"
    R="$C-raw"; mkdir -p "$R/boot" "$R/root"
    PSK="$(printf '%064d' 0 | tr 0 a)"
    printf 'SSID=x\nPASSPHRASE=%s\n' "$PSK" > "$R/boot/wifi.txt"
    run_fb "$R" "$sh" && check "64-hex passphrase written as a raw psk" grep -qx "	psk=$PSK" "$R/root/etc/wpa_supplicant/wpa_supplicant-wlan0.conf" || bad "raw psk import failed: $(cat "$R/log")"
    M="$C-bom"; mkdir -p "$M/boot" "$M/root"
    printf '\357\273\277SSID=bom-net\r\nPASSPHRASE=12345678\r\n' > "$M/boot/wifi.txt"
    printf '\357\273\277[auth]\r\npassword = "long enough"\r\n' > "$M/boot/peercam.toml"
    run_fb "$M" "$sh" && check "UTF-8 BOM + CRLF (Notepad): SSID still read" grep -qx "	ssid=$(hexof bom-net)" "$M/root/etc/wpa_supplicant/wpa_supplicant-wlan0.conf" || bad "BOM import failed: $(cat "$M/log")"
    check "UTF-8 BOM: config without BOM, valid TOML" test "$(head -c 3 "$M/root/etc/peercam/peercam.toml")" = "[au"

    # A password in a form the script does not parse: refused, nothing imported, no plaintext left
    # anywhere (it used to pass through to /etc and .applied while the log said "password removed").
    n=0
    for form in 'auth.password = "ss\"wo\\rd"' '[auth]\n'"'"'password'"'"' = "ss\"wo\\rd"' '[ "auth" ]\npassword = "ss\"wo\\rd"' \
                'auth = { password = "ss\"wo\\rd" }' '[auth]\nauth.password = "x"\n[auth.password]\nvalue = "ss\"wo\\rd"'; do
        n=$((n + 1)); D="$C-form$n"; mkdir -p "$D/boot" "$D/root"
        printf '[video]\nwidth = 640\n'"$form"'\n' > "$D/boot/peercam.toml"
        if run_fb "$D" "$sh"; then bad "password form $n ($(head -c 40 "$D/boot/peercam.toml.applied" 2>/dev/null)) must be refused"
        else check "password form $n refused with a message naming the form" grep -q "cannot read (a dotted key" "$D/log"; fi
        check "password form $n: nothing written to /etc" test ! -e "$D/root/etc/peercam/peercam.toml"
        check "password form $n: no .applied copy with the plaintext" test ! -e "$D/boot/peercam.toml.applied"
        check "password form $n: the boot file stays for the user to fix" test -f "$D/boot/peercam.toml"
    done

    B="$C-bad"; mkdir -p "$B/boot" "$B/root"
    printf 'SSID=x\nPASSPHRASE=short\nCOUNTRY=Germany\n' > "$B/boot/wifi.txt"
    if run_fb "$B" "$sh"; then bad "invalid wifi.txt must fail"; else ok "invalid COUNTRY/short passphrase rejected"; fi
    check "rejected wifi.txt stays in place" test -f "$B/boot/wifi.txt"
    E="$C-empty"; mkdir -p "$E/boot" "$E/root"; cp "$BOARD/boot/wifi.txt" "$E/boot/"
    run_fb "$E" "$sh" && check "unedited wifi.txt: left alone, nothing written" \
        test -f "$E/boot/wifi.txt" -a ! -e "$E/root/etc/wpa_supplicant" || bad "unedited wifi.txt failed: $(cat "$E/log")"
done

echo "firstboot: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
