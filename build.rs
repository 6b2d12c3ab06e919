//! Embeds the PeerJS client library the device serves at `/vendor/peerjs.min.js` (the device has
//! no internet, so pages on it cannot load PeerJS from a CDN). npm installs it at build time from
//! `web-vendor/package.json` (pinned, with its lock file): `npm ci --prefix web-vendor`, which
//! `scripts/install-deps.sh` runs; `scripts/make-release-tarball.sh` puts the installed files in
//! the source tarball for the offline Buildroot build. Nothing from npm is committed.
//!
//! Without it the build still succeeds (other work must not depend on npm) with a warning, and
//! the served file is a stub that throws an error saying how to install it — unless
//! `PEERCAM_REQUIRE_PEERJS=1`, which makes a missing library a build error (release builds).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The packages bundled into `peerjs.min.js`, whose licenses must travel with it.
const BUNDLED: &[(&str, &[&str])] = &[
    ("peerjs", &["LICENSE"]),
    ("eventemitter3", &["LICENSE"]),
    ("peerjs-js-binarypack", &["LICENSE"]),
    ("webrtc-adapter", &["LICENSE.md", "LICENSE"]),
    ("sdp", &["LICENSE"]),
];

const INSTALL_HINT: &str = "run `npm ci --prefix web-vendor` (scripts/install-deps.sh does) and rebuild";

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let modules = root.join("web-vendor/node_modules");
    // A directory: cargo rescans it, so `npm ci` (or removing node_modules) triggers a rebuild.
    println!("cargo:rerun-if-changed=web-vendor");
    println!("cargo:rerun-if-env-changed=PEERCAM_REQUIRE_PEERJS");

    let js = modules.join("peerjs/dist/peerjs.min.js");
    let (script, license) = match fs::read(&js) {
        Ok(script) => {
            let version = package_version(&modules.join("peerjs/package.json")).unwrap_or_else(|| "?".into());
            let pinned = pinned_version(&root.join("web-vendor/package.json"));
            if pinned.as_deref() != Some(version.as_str()) {
                println!(
                    "cargo:warning=web-vendor: installed peerjs {version} is not the pinned {} — {INSTALL_HINT}",
                    pinned.as_deref().unwrap_or("?")
                );
            }
            (script, licenses(&modules, &version))
        }
        Err(e) => {
            if env::var("PEERCAM_REQUIRE_PEERJS").as_deref() == Ok("1") {
                panic!("the PeerJS client library is not installed ({}: {e}): {INSTALL_HINT}", js.display());
            }
            println!("cargo:warning=the PeerJS client library is not installed ({}): the /peerjs-demo page will not work; {INSTALL_HINT}", js.display());
            let msg = format!("peercam was built without the PeerJS client library: {INSTALL_HINT}");
            let stub = format!(
                "/* {msg} */\nconsole.error({msg:?});\nwindow.PEERJS_MISSING = {msg:?};\nthrow new Error({msg:?});\n"
            );
            (stub.into_bytes(), format!("{msg}\n").into_bytes())
        }
    };
    write(&out.join("peerjs.min.js"), &script);
    write(&out.join("peerjs.LICENSE.txt"), &license);
}

fn write(path: &Path, data: &[u8]) {
    // Only when changed, so an unchanged library does not look new to anything watching OUT_DIR.
    if fs::read(path).ok().as_deref() != Some(data) {
        fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

fn licenses(modules: &Path, version: &str) -> Vec<u8> {
    let mut text = format!(
        "/vendor/peerjs.min.js is peerjs {version} (https://github.com/peers/peerjs), installed from npm and\n\
         served unmodified. It bundles the packages below; their licenses follow.\n"
    );
    for (pkg, names) in BUNDLED {
        let found = names.iter().find_map(|n| fs::read_to_string(modules.join(pkg).join(n)).ok());
        let v = package_version(&modules.join(pkg).join("package.json")).unwrap_or_default();
        text.push_str(&format!("\n======== {pkg} {v} ========\n\n"));
        match found {
            Some(l) => text.push_str(&l),
            None => println!("cargo:warning=web-vendor: no license file found for {pkg}"),
        }
    }
    text.into_bytes()
}

/// `"version": "…"` of a package.json (the first one; no JSON parser in a build script).
fn package_version(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let rest = &text[text.find("\"version\"")? + "\"version\"".len()..];
    let rest = &rest[rest.find('"')? + 1..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The peerjs version `web-vendor/package.json` pins.
fn pinned_version(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let rest = &text[text.find("\"peerjs\"")? + "\"peerjs\"".len()..];
    let rest = &rest[rest.find('"')? + 1..];
    Some(rest[..rest.find('"')?].to_string())
}
