# vitcodec — the README's two commands (`make demo`, `make test`) do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo protos zoo rate-accuracy clean-venv help

help:
	@echo "make install    create .venv (idempotent) with vitcodec[cloud,train,dev] + the Fashion-MNIST Debian package"
	@echo "make test       install if needed, then run the whole test suite"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make lint       ruff (style and likely bugs) and pyright (types; every import resolved), as CI runs them"
	@echo "make demo       install if needed, serve the default model, run the edge client on the samples"
	@echo "make protos     regenerate the gRPC modules from protos/*.proto"
	@echo "make zoo        retrain the Fashion-MNIST zoo with the two-step recipe (hours on 2 CPU cores)"
	@echo "make rate-accuracy  the zoo against JPEG/WebP/AVIF + a pixel CNN (RATE_ARGS='--limit 1000 ...')"

# One distribution per folder (docs/architecture.md, "Folders and distributions"), installed editable in one pip
# command so pip takes each vitcodec-* requirement from its folder, never from an index.
DISTS := common codec packages protos edge models cloud demo
PROTO_PKG := protos/src/vitcodec/protos

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(DISTS))
	@if [ "$$(id -u)" = "0" ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(addprefix -e ./,$(DISTS)) -e '.[cloud,train,dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Configuration in pyproject.toml ([tool.ruff], [tool.pyright]); CI runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright

demo: $(STAMP)
	$(PY) -m vitcodec.demo $(DEMO_ARGS)

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I $(PROTO_PKG) --python_out=$(PROTO_PKG) --pyi_out=$(PROTO_PKG) --grpc_python_out=$(PROTO_PKG) $(PROTO_PKG)/*.proto
	$(PY) protos/fix_imports.py

clean-venv:
	rm -rf $(VENV)

# The zoo recipe (docs/models.md): step one with the conv tokenizer and sequence pooling (chosen on the
# validation split), random erasing, 45 epochs on the fit split; then step two from it, q1, q2 and q3 in
# parallel, one thread each (each quality passes its own alpha/beta, see the model card for why); export
# (compressed packages are calibrated on the fit/val splits: temperature and novelty threshold), and
# measurement on the whole test split. About 2 hours on 2 CPU cores; every run resumes from its last.pt.
# The bundled zoo is split by side: the cloud files (weights.pt, classifier.onnx) last move to
# CLOUD_ZOO_OUT, which vitcodec-cloud ships, so the edge's vitcodec-packages carries none (docs/models.md).
ZOO_RUNS ?= runs
ZOO_OUT ?= packages/src/vitcodec/packages/zoo
CLOUD_ZOO_OUT ?= cloud/src/vitcodec/cloud/zoo
JOINT = $(VENV)/bin/vitcodec train --stage joint --data fashion-mnist --batch-size 64 --lr 3e-4 --codec-lr 1e-3 \
	--warmup-steps 100 --label-smoothing 0.1 --no-progress --threads 1 \
	--init $(ZOO_RUNS)/fmnist-pretrain/final.pt
zoo: $(STAMP)
	$(VENV)/bin/vitcodec train --stage pretrain --preset jcc-fmnist-28-s8 --tokenizer conv --pool seq \
		--data fashion-mnist --epochs 45 --batch-size 128 --lr 1e-3 --warmup-steps 500 --label-smoothing 0.1 \
		--erase-prob 0.25 --threads 2 --no-progress --out $(ZOO_RUNS)/fmnist-pretrain0
	$(VENV)/bin/vitcodec train --stage pretrain --init $(ZOO_RUNS)/fmnist-pretrain0/final.pt \
		--data fashion-mnist --epochs 15 --batch-size 128 --lr 2e-4 --warmup-steps 100 --label-smoothing 0.1 \
		--erase-prob 0.25 --threads 2 --no-progress --out $(ZOO_RUNS)/fmnist-pretrain
	$(JOINT) --epochs 5 --alpha 0.6 --beta 0.0001 --out $(ZOO_RUNS)/fmnist-q1 & \
	$(JOINT) --epochs 5 --alpha 1.5 --beta 0.0004 --out $(ZOO_RUNS)/fmnist-q2 & \
	$(JOINT) --epochs 6 --alpha 4.0 --beta 0.0025 --out $(ZOO_RUNS)/fmnist-q3 & \
	wait
	$(VENV)/bin/vitcodec export --model $(ZOO_RUNS)/fmnist-pretrain/final.pt --out $(ZOO_OUT) --name fmnist-uncompressed
	for q in 1 2 3; do \
		$(VENV)/bin/vitcodec export --model $(ZOO_RUNS)/fmnist-q$$q/final.pt --out $(ZOO_OUT) --name fmnist-q$$q --quality $$q || exit 1; \
	done
	for m in fmnist-uncompressed fmnist-q1 fmnist-q2 fmnist-q3; do \
		$(VENV)/bin/vitcodec eval --model $(ZOO_OUT)/$$m/1 --data fashion-mnist --record --json || exit 1; \
	done
	$(PY) -m vitcodec.packages.split_zoo $(ZOO_OUT) $(CLOUD_ZOO_OUT)

# Rate–accuracy against JPEG, WebP and AVIF with a pixel CNN, raw and fine-tuned per codec and quality
# (docs/benchmarks.md): table on stdout, figures in benchmarks/results/rate_accuracy_<date>.json, plot in
# docs/rate_accuracy.png, CNN weights cached in runs/rate-accuracy
# (the cached raw CNN is also the teacher for `vitcodec train --teacher`). Full size: about an hour on 2 cores.
RATE_ARGS ?= --from-manifest --codecs-from benchmarks/results/rate_accuracy_codecs_2026-12-01.json
rate-accuracy: $(STAMP)
	$(PY) benchmarks/bench_rate_accuracy.py $(RATE_ARGS)
