# The two commands a newcomer needs:  `make demo`  and  `make test`.
# Both set up (idempotently) everything the project needs via scripts/setup_env.sh first.
SHELL := /bin/bash
PY := .venv/bin/python

# ROS network hygiene for everything started from here: discovery stays on this machine, logs stay
# in the build tree. Tests pick their own ROS_DOMAIN_ID per run (tests/conftest.py).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOG_DIR := $(CURDIR)/build/ros_log
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup test demo bench bench-quick lint clean
setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: setup
	$(PY) -m streamdp.ros_nodes.demo

bench: setup
	$(PY) -m streamdp.sim.bench

bench-quick: setup
	$(PY) -m streamdp.sim.bench quick=true

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf build outputs runs .pytest_cache
