# peercam — the two commands a developer needs:
#   make run    build and start the service on the built-in test pattern and tone
#   make test   install what the tests need, build once, run every test stage
# (make test first runs preflight: every apt-get install of the later stages, simulated)
.PHONY: run test deps preflight build unit e2e links peerjs remote whip interop service security events nvr night soak soak-short image vm fuzz bench bench-links cross clean

BIN := target/release/peercam

deps:
	./scripts/install-deps.sh

preflight: deps
	./scripts/check-installs.sh

build: deps
	cargo build --release --locked

run: build
	$(BIN) run $(if $(CONFIG),--config $(CONFIG))

# One target per test stage, in the order scripts/test-all.sh runs them (tests/README.md says
# what each needs; every stage but unit and image needs root). Run one test of a stage with
# e.g. `make e2e T=talk` (the names each run.sh takes).
unit:
	cargo test --release --locked --workspace $(T)

e2e:
	tests/e2e/run.sh $(T)

links:
	tests/links/run.sh $(T)

peerjs:
	tests/peerjs/run.sh $(T)

remote:
	tests/remote/run.sh $(T)

whip:
	tests/whip/run.sh

interop:
	tests/interop/run.sh $(T)

service:
	tests/service/run.sh $(T)

image:
	tests/image/run.sh

vm:
	tests/vm/run.sh

security: build
	tests/security/run.sh $(T)

# Viewer churn (4-8 aiortc / PeerJS clients at once) for SOAK_MINUTES (default 30) against the
# release build: RSS, fds, threads and live sessions each minute must stay flat after the warm-up
# and come back when the last client leaves. Writes bench/results/soak.{csv,md,png}. Needs root.
soak: build
	SOAK_MINUTES=$${SOAK_MINUTES:-30} SOAK_OUT=$${SOAK_OUT:-bench/results} tests/soak/run.sh

# The 3-minute version, the `make test` stage (results in tests/soak/artifacts/).
soak-short: build
	tests/soak/run.sh

# Events everywhere (issue 14): SSE, MQTT against a real Mosquitto, the webhook, and the sound
# analysis end to end through alsa-lib's file plugin. Needs root; ~1.5 min.
events: build
	tests/events/run.sh

nvr: build
	tests/nvr/run.sh

night: build
	tests/night/run.sh

# Longer fuzzing of the network / SD-card parsers (fuzz/README.md): FUZZ_SECONDS per target
# (7 targets; default 120 s each, ~15 min). The short run (2 s each) is part of `make unit`.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-120} cargo test --release --locked --test fuzz -- --nocapture

# The layer rule (docs/architecture.md) is checked first: a module importing one above it fails at once.
test: preflight build
	./scripts/check-layers.sh --strict
	./scripts/test-all.sh

bench: build
	bench/run.sh

# peercam vs Chromium→Chromium over shaped links (veth + tbf + iptables loss, Chromium viewers in
# network namespaces): bench/results/links.{md,json,png}. Needs root; ~6 minutes.
bench-links: build
	bench/links.sh

cross:
	scripts/cross-build.sh aarch64

clean:
	cargo clean
