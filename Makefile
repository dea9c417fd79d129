# `make` sets up the environment and runs the whole pipeline on params.yaml; `make test` sets up and runs the checks.
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: all setup browser repro push pull test lint ui serve review bench-accuracy bench-serving bench-learning-curve clean

all: repro

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[pipeline,dev]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

push: setup  ## data, models and metrics to the default DVC remote (README: from one machine to a team)
	python -m captcha_mlops.remote push

pull: setup  ## ... and back, in another clone: `dvc repro` then has nothing to do
	python -m captcha_mlops.remote pull

repro: setup  ## generate -> verify_split -> train -> evaluate (-> package), only what changed
	dvc repro
	dvc metrics show

lint: setup
	ruff check .
	ruff format --check .

# Debian's chromium and chromedriver, for the review page's browser test: installed when missing (as root).
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		{ echo "the browser test needs chromium: sudo apt-get install chromium chromium-driver"; exit 1; }

test: lint browser
	python -m pytest -q

ui: setup  ## compare runs in the MLflow UI at http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db)

serve: setup  ## the packaged champion models behind one HTTP service at http://127.0.0.1:3000
	bentoml serve service:Captcha --timeout-keep-alive 75  # service.py says why

review: setup  ## label the images the service kept (CAPTCHA_SAVE_DIR=KEPT) at http://127.0.0.1:8000
	python -m captcha_mlops.review $(if $(KEPT),--kept $(KEPT))

bench-accuracy: setup
	python -m bench.accuracy

bench-serving: setup
	python -m bench.serving

bench-learning-curve: setup
	python -m bench.learning_curve

clean:  ## pipeline outputs only; the MLflow store and DVC cache are kept
	rm -rf data/origin data/split models reports/*.json reports/*.csv reports/*.png checkpoints
