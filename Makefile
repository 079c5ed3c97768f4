# Murmur — every target creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.murmur-installed
OUT ?= runs/demo

.PHONY: demo demo-brats test lint typecheck bench system-deps clean lock

# Debian packages: gcc and GMP build fastecdsa (libp2p); mosquitto is the MQTT broker
# that the telemetry tests start on loopback; chromium renders `murmur report`'s page
# headless in tests/test_report.py; iptables and libnetfilter-queue-dev (which the
# NetfilterQueue extension builds against) shape the namespaced WAN of sim.netns on
# kernels without netem (sim.wan_shaping).
system-deps:
	@missing=""; for p in gcc libgmp-dev mosquitto chromium iptables libnetfilter-queue-dev; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and exactly: 2.13.0 is the CPU build on the project machines.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/murmur sim --nodes 16 --topology ring --compressor top-k:0.1+q8 --rounds 200 \
		--dataset breast-cancer --alpha 0.5 --seed 0 --out $(OUT) \
		--methods central,local,fedavg,dpsgd,murmur,murmur-gt

# Tumour segmentation: 4 generated hospitals' brain MRI (BraTS layout, on nilearn's MNI152),
# a 2D MONAI U-Net trained by gossip beside central, local-only and FedAvg.
BRATS ?= runs/demo-brats/data
demo-brats: $(STAMP)
	$(VENV)/bin/murmur data make-brats --sites 4 --cases-per-site 8 --out $(BRATS)
	$(VENV)/bin/murmur sim --dataset brats:$(BRATS) --model unet2d:8 --patch 64 --local-steps 2 \
		--topology ring --rounds 40 --compressor block-k:0.1 --seed 0 --out runs/demo-brats/sim \
		--methods central,local,fedavg,murmur

lint: $(STAMP)
	$(VENV)/bin/ruff check murmur node crypto topology sim tests benchmarks examples
	$(VENV)/bin/ruff format --check murmur node crypto topology sim tests benchmarks examples
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy examples

test: $(STAMP) system-deps
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.network
	$(PY) -m benchmarks.fuzz
	$(PY) -m benchmarks.crypto
	$(PY) -m benchmarks.secure
	$(PY) -m benchmarks.dp
	$(PY) -m benchmarks.convergence
	$(PY) -m benchmarks.audit
	$(PY) -m benchmarks.operations
	$(PY) -m benchmarks.wan
	$(PY) -m benchmarks.brats

# Re-resolve the pinned versions after changing dependencies in pyproject.toml.
lock: $(STAMP)
	@{ echo "# pip constraints: the versions every install resolves to (make lock regenerates)."; \
	  $(PY) -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^murmur' \
	  | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
