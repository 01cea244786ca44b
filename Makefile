# mmvim entry points. Every target sets up .venv first (idempotent: a second
# run only checks what is installed and takes seconds).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_WORK_DIR ?= work_dirs/demo
DEMO_CONFIG ?= configs/demo_upernet_vim_shapes.py
DET_DEMO_WORK_DIR ?= work_dirs/demo_det
DET_DEMO_CONFIG ?= configs/demo_mask_rcnn_vmamba_shapes.py

.PHONY: install demo demo-det test test-fast lint bench-ops docs gpu-bundle clean

install:
	@bash scripts/setup_env.sh

# The main job on the embedded demo data: generate it, train, evaluate
# (metric printed by tools/test.py), save prediction overlays.
demo: install
	$(PY) tools/make_demo_data.py
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_WORK_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) $$(cat $(DEMO_WORK_DIR)/last_checkpoint) \
		--work-dir $(DEMO_WORK_DIR) --show-dir $(DEMO_WORK_DIR)/overlays \
		--out $(DEMO_WORK_DIR)/test_metrics.json
	@echo "prediction overlays (ground truth | prediction): $(DEMO_WORK_DIR)/overlays/vis_data/vis_image/"

# The detection demo: Mask R-CNN + a reduced VMamba on the demo scenes in
# COCO layout; bbox/segm AP from mmdet's CocoMetric, overlays.
demo-det: install
	$(PY) tools/make_demo_data.py --task det
	$(PY) tools/train.py $(DET_DEMO_CONFIG) --work-dir $(DET_DEMO_WORK_DIR)
	$(PY) tools/test.py $(DET_DEMO_CONFIG) $$(cat $(DET_DEMO_WORK_DIR)/last_checkpoint) \
		--work-dir $(DET_DEMO_WORK_DIR) --show-dir $(DET_DEMO_WORK_DIR)/overlays \
		--out $(DET_DEMO_WORK_DIR)/test_metrics.json
	@echo "prediction overlays: $(DET_DEMO_WORK_DIR)/overlays/"

# The whole test suite (CPU; GPU tests skip without CUDA), in TEST_WORKERS
# pytest-xdist processes that take whole files (a file's fixtures are built
# once) and share the cores (tests/conftest.py); TEST_WORKERS=0 runs it in
# this process alone, as does an install without the dev extra (no xdist).
TEST_WORKERS ?= 2
PYTEST_ARGS = $$($(PY) -c 'import xdist' 2>/dev/null && echo '-n $(TEST_WORKERS) --dist loadfile')

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

# Without the slow end-to-end runs.
test-fast: install
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check mmvim tools tests configs setup.py

bench-ops: install
	$(PY) tools/benchmark_ops.py

# The documentation site (Sphinx + MyST: docs/*.md and the API reference
# from the docstrings); warnings are errors, no network needed.
docs: install
	@$(PY) -c "import sphinx, myst_parser, furo" 2>/dev/null || { \
		echo "make docs needs the docs extra: MMVIM_EXTRAS=dev make install (dev includes it) or pip install -e '.[docs]'"; exit 2; }
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "documentation site: docs/_build/html/index.html"

# What one call on a lent GPU machine carries (git-ignored .gpu-bundle/,
# at most 64 MiB): the wheels the device image lacks, the kernel sdists,
# mmvim's sources and run.sh (docs/triton.md, "A first device session").
gpu-bundle: install
	$(PY) -m tools.gpu_check.bundle

clean:
	rm -rf work_dirs .pytest_cache docs/_build
