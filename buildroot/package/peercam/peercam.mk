################################################################################
#
# peercam
#
################################################################################

# The source is a release tarball made by scripts/make-release-tarball.sh in the
# peercam checkout this BR2_EXTERNAL tree belongs to: it contains the crate,
# its vendored dependencies (VENDOR/) and the .cargo/config.toml that points
# cargo at them, so Buildroot's cargo download post-processing leaves it alone
# and the build runs with `cargo build --offline --locked`.
# The script also writes board/peercam/patches/peercam/peercam.hash (git-ignored),
# found through BR2_GLOBAL_PATCH_DIR (see the peercam_*_defconfig files), so
# BR2_DOWNLOAD_FORCE_CHECK_HASHES=y keeps working.
# Keep PEERCAM_VERSION equal to Cargo.toml's version (scripts/check-buildroot.py
# checks it).
PEERCAM_VERSION = 0.1.0
# Not the default name: for cargo packages that is peercam-<version>-cargoN.tar.gz,
# N being Buildroot's vendoring format (4 in 2026.02, 5 in 2026.05); the tarball
# is vendored already, so one name fits every Buildroot release.
# check-package RemoveDefaultPackageSourceVariable
PEERCAM_SOURCE = peercam-$(PEERCAM_VERSION).tar.gz
PEERCAM_SITE = file://$(BR2_EXTERNAL_PEERCAM_PATH)/../dist
PEERCAM_SITE_METHOD = file
# No license field in Cargo.toml yet: set both together.
PEERCAM_LICENSE = MIT OR Apache-2.0
PEERCAM_LICENSE_FILES = LICENSE-MIT LICENSE-APACHE

# alsa-lib: alsa-sys links libasound (found with pkg-config).
# host-clang: the v4l crate's v4l2-sys-mit runs bindgen, which loads libclang
#   at build time (as Buildroot's own host-rust-bindgen does).
# cmake: opusic-sys builds libopus with the cmake crate.
PEERCAM_DEPENDENCIES = \
	alsa-lib \
	host-clang \
	host-pkgconf \
	$(BR2_CMAKE_HOST_DEPENDENCY)

# TARGET_CONFIGURE_OPTS (added by the cargo infrastructure) already sets CC,
# CXX, AR, PKG_CONFIG and the target CFLAGS for the cc and cmake crates.
# opt-level "s" for the whole-program LTO of the Rust code (fits the SD-card size
# mark) overrides the cargo infrastructure's BR2_OPTIMIZE_* mapping; the C codecs
# (openh264, libopus) keep opt-level 3 through Cargo.toml's per-package profiles,
# which the cc/cmake crates pass on.
# Fat LTO, one codegen unit: the same size-optimized build as scripts/cross-build.sh.
PEERCAM_CARGO_ENV = \
	PKG_CONFIG_ALLOW_CROSS=1 \
	LIBCLANG_PATH=$(HOST_DIR)/lib \
	BINDGEN_EXTRA_CLANG_ARGS="--sysroot=$(STAGING_DIR)" \
	CMAKE=$(BR2_CMAKE) \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
	CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1

# Development builds from a working tree (PEERCAM_OVERRIDE_SRCDIR in local.mk):
# the rsync'ed tree has no VENDOR/, so fetch the crates into Buildroot's cargo
# home first (this needs network access; release builds do not).
PEERCAM_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude target --exclude dist
ifneq ($(PEERCAM_OVERRIDE_SRCDIR),)
define PEERCAM_CARGO_FETCH
	cd $(@D) && $(HOST_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		cargo fetch --locked --manifest-path Cargo.toml
endef
PEERCAM_PRE_BUILD_HOOKS += PEERCAM_CARGO_FETCH
endif

# The binary itself is installed by the cargo infrastructure (cargo install
# --root $(TARGET_DIR)/usr), i.e. /usr/bin/peercam.

define PEERCAM_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/peercam.service \
		$(TARGET_DIR)/usr/lib/systemd/system/peercam.service
endef

# A static system user (see the comment at the top of systemd/peercam.service
# for why not DynamicUser=); device access comes from the unit's
# SupplementaryGroups=video audio.
define PEERCAM_USERS
	peercam -1 peercam -1 * - - - peercam camera service
endef

# The configuration holds the password hash: readable by the service only.
define PEERCAM_PERMISSIONS
	/etc/peercam d 755 root root - - - - -
	/etc/peercam/peercam.toml F 640 root peercam - - - - -
endef

$(eval $(cargo-package))
