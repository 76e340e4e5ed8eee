# Two set-up commands for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY      := .venv/bin/python
WORK    ?= workdirs/demo
APT_PKGS := fluidsynth libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont mma
export XLA_FLAGS ?=
# TF_CPP_MIN_LOG_LEVEL=2: no INFO or WARNING logs; XLA's errors and fatal messages still show (3 hid errors).
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast test-slow install data sps-demo clean-demo

# --- environment ------------------------------------------------------------------------------
.venv/.apt-done:
	@mkdir -p .venv
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $@

.venv/.installed: pyproject.toml .venv/.apt-done
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,torch]'
	@touch $@

install: .venv/.installed

# --- data: the embedded default corpus (music21's bundled corpus + Debian game soundtracks) -----
data/debian_midi/.done: .venv/.installed
	bash scripts/fetch_debian_midi.sh data/debian_midi
	@touch $@

data: data/debian_midi/.done
	$(PY) -m m4mjax.datasets.default --variant=demo --workers=2

# --- the main job on the embedded default data --------------------------------------------------
demo: data
	$(PY) -m m4mjax.train --config=experiments/m4m/lm_pretrain.py:demo --workdir=$(WORK)
	$(PY) -m m4mjax.evaluate --workdir=$(WORK)
	$(PY) -m m4mjax.sample --workdir=$(WORK) --out=$(WORK)/sample.mid
	@if [ -f pretrained/analysis/config.json ]; then \
	  $(PY) -m m4mjax.analyze examples/analysis_example.mid --out=$(WORK)/analysed && \
	  echo "shipped analyser on examples/analysis_example.mid: first chords (start end label, seconds)" && \
	  head -8 $(WORK)/analysed/analysis_example.lab && echo "first downbeats (seconds)" && \
	  head -4 $(WORK)/analysed/analysis_example.beats; \
	else echo "(no shipped analyser yet: pretrained/analysis, see docs/RESULTS.md; analyze with --workdir=RUN)"; fi
	@echo; echo "demo outputs:"; echo "  run dir      $(WORK)  (config.json, metrics.jsonl, checkpoints/, tb/)"; \
	echo "  evaluation   $(WORK)/eval.json"; echo "  sampled MIDI $(WORK)/sample.mid"

# --- tests ------------------------------------------------------------------------------------
# Never hangs: a test past --timeout has its stacks dumped and its worker ended; a worker that dies (abort, segfault,
# SIGKILL) fails the run naming its test (--max-worker-restart=0; tests/conftest.py interrupts the other worker).
# --capture=sys: C-level stderr (XLA's fatal messages) is not swallowed with a crashed worker's captured output.
PYTEST := $(PY) -m pytest -q --timeout=600 --timeout-method=thread --capture=sys --durations=15
test: .venv/.installed
	$(PYTEST) -n 2 --dist loadgroup --max-worker-restart=0

test-fast: .venv/.installed  # the unit tier: no training runs, subprocesses or notebooks (tests/conftest.py)
	$(PYTEST) -n 2 --max-worker-restart=0 -m 'not slow and not integration'

test-slow: .venv/.installed
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf $(WORK)
