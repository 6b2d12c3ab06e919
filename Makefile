# peercam — the two commands a developer needs:
#   make run    build and start the service on the built-in test pattern and tone
#   make test   install what the tests need, build once, run every test stage
.PHONY: run test deps build unit e2e interop image bench cross clean

BIN := target/release/peercam

deps:
	./scripts/install-deps.sh

build: deps
	cargo build --release --locked

run: build
	$(BIN) run $(if $(CONFIG),--config $(CONFIG))

unit:
	cargo test --release --locked

e2e:
	tests/e2e/run.sh

interop:
	tests/interop/run.sh

image:
	tests/image/run.sh

test: build
	./scripts/test-all.sh

bench: build
	bench/run.sh

cross:
	scripts/cross-build.sh aarch64

clean:
	cargo clean
