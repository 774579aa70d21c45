# The same targets CI runs (.ci/run): `make test`, `make lint`, `make demo`, `make bench-*`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and the demo use: the real programs, never mocks. strace: the
# power-cut tests read the order of a snapshot's flush and renames from the kernel's side.
SYSTEM_PACKAGES := chromium chromium-headless-shell chromium-driver tmux openssh-client \
	openssh-server rsync iproute2 procps debootstrap systemd-container xvfb strace
PYTEST_ARGS ?=
# Test workers. Most tests wait on real programs (Chromium, sshd, tmux, a booting machine)
# rather than compute: on the 2-core machine CI runs on, two workers kept the cores about
# 50 % busy (pytest 481 s). Three take 355 s, with every test as long as before; the
# deployed machine's module (about 250 s on one worker) is the floor.
TEST_WORKERS ?= 3

.PHONY: help venv system-deps deps test test-arm64 lint format demo bench bench-tunnel bench-browser bench-sessions \
	bench-recovery bench-idle bench-tmux bench-sync bench-sync-watch bench-snapshot-flush bench-vm-stats bench-vm-messages soak clean

help:
	@echo "make test    install what the tests need, then run them all"
	@echo "make test-arm64  the role played on an emulated arm64 Debian 12 machine (minutes)"
	@echo "make demo    the whole loop against a simulated Colab on this machine"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make soak    the whole daemon under faults for SOAK_MINUTES (20): does anything grow?"
	@echo "make bench-tunnel | bench-browser | bench-recovery | bench-tmux | bench-sync | bench-sync-watch | bench-idle"
	@echo "make bench-snapshot-flush | bench-sessions | bench-vm-stats | bench-vm-messages"

$(BIN)/colab-gateway: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

venv: $(BIN)/colab-gateway

# apt when root; otherwise say exactly what to install.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing system packages; run:  sudo apt-get install$$missing" >&2; exit 1; \
	fi

deps: venv system-deps

# In parallel (pytest-xdist): loadscope gives each test module to one worker (see
# tests/conftest.py: what a module's tests share, and the longest modules, the deploy test
# first, handed out first); --no-loadscope-reorder keeps the order conftest.py chose. In a
# random order (pytest-random-order, per module; the header shows the seed, to repeat it:
# PYTEST_ARGS=--random-order-seed=N). The 15 slowest steps are listed (--durations), so
# that every run, CI's included, shows where the suite's time goes. One pytest run: its
# summary line ("N passed in …") is the last line, and its exit status is make's.
test: deps
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --random-order \
		--durations=15 $(PYTEST_ARGS)

# The role on arm64 (tests/test_deploy_arm64.py): an arm64 Debian 12 root under qemu-user,
# booted with systemd-nspawn. Not in `make test`: the emulated play takes minutes of both
# cores (docs/install.md has the figures). -s shows its phases and figures; timeout bounds
# the whole run, the first one's debootstrap included.
ARM64_PACKAGES := qemu-user-static
test-arm64: deps
	@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES="$(ARM64_PACKAGES)"
	COLAB_GATEWAY_TEST_ARM64=1 timeout 3600 $(BIN)/pytest -s -v tests/test_deploy_arm64.py \
		$(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy gateway
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ansible-lint --offline --profile production -q

format: venv
	$(BIN)/ruff check --fix gateway tests bench
	$(BIN)/ruff format gateway tests bench

demo: deps
	$(BIN)/colab-gateway demo

bench: bench-tunnel bench-browser bench-sessions bench-recovery bench-tmux bench-sync bench-sync-watch bench-idle \
	bench-snapshot-flush bench-vm-stats bench-vm-messages

bench-tunnel: deps
	$(BIN)/python bench/bench_tunnel.py

bench-browser: deps
	$(BIN)/python bench/bench_browser.py

# Several sessions on one browser (issue 26): reaction and Chromium's PSS with 1, 2 and 4.
bench-sessions: deps
	$(BIN)/python bench/bench_sessions.py

bench-recovery: deps
	$(BIN)/python bench/bench_recovery.py

bench-idle: deps
	$(BIN)/python bench/bench_daemon_idle.py

bench-tmux: deps
	$(BIN)/python bench/bench_tmux_reconnect.py

# BENCH_SYNC_ARGS="--mb 256" for a smaller tree on a slow machine.
bench-sync: deps
	$(BIN)/python bench/bench_sync.py $(BENCH_SYNC_ARGS)

# What watching a pull's limits while rsync runs costs, against statvfs alone.
bench-sync-watch: deps
	$(BIN)/python bench/bench_sync_watch.py $(BENCH_SYNC_ARGS)

# What flushing a snapshot before its commit costs (syncfs, the fsync fallback, neither).
bench-snapshot-flush: deps
	$(BIN)/python bench/bench_snapshot_flush.py $(BENCH_FLUSH_ARGS)

# What one VM-facts sample costs on the Pi and the VM, against a fresh ssh login (root).
bench-vm-stats: deps
	$(BIN)/python bench/bench_vm_stats.py

# What one collection of a VM's gw-notify outbox costs, over the kept connection and alone.
bench-vm-messages: deps
	$(BIN)/python bench/bench_vm_messages.py

# The whole daemon under accelerated faults; SOAK_MINUTES=120 for the long run. Its CSV,
# plot and logs go to SOAK_OUT (default: a new temporary directory). docs/soak.md.
SOAK_MINUTES ?= 20
SOAK_OUT ?=
soak: deps
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python bench/soak.py $(if $(SOAK_OUT),--out $(SOAK_OUT))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
