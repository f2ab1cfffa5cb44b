# The two entry points of the README. `make validate` sets up and runs the main job; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
PEERS := images/peers

.PHONY: setup validate test lint rust-test py-test clean

# System packages (mmdebstrap for the offline base image, nftables/conntrack for host-side checks),
# the Python package, and the Rust reference peers. Idempotent: a second run does almost nothing.
setup:
	@bash scripts/setup.sh

validate: setup
	dcutr-lab run runbooks/phase4-mixed-nat.yaml

lint:
	ruff check .
	ruff format --check .
	@if [ -f $(PEERS)/Cargo.toml ]; then cd $(PEERS) && cargo fmt --check && cargo clippy --release --all-targets -- -D warnings; fi

rust-test:
	@if [ -f $(PEERS)/Cargo.toml ]; then cd $(PEERS) && cargo test --release; fi

py-test:
	$(PYTHON) -m pytest -n 2 --timeout 900

test: lint rust-test py-test

clean:
	dcutr-lab clean
