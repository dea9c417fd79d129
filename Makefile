# `make` sets up the environment and runs the whole pipeline on params.yaml; `make test` sets up and runs the checks.
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: all setup repro push pull test lint ui serve bench-accuracy bench-serving bench-learning-curve clean

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

test: lint
	python -m pytest -q

ui: setup  ## compare runs in the MLflow UI at http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db)

serve: setup  ## the packaged champion models behind one HTTP service at http://127.0.0.1:3000
	bentoml serve service:Captcha --timeout-keep-alive 75  # service.py says why

bench-accuracy: setup
	python -m bench.accuracy

bench-serving: setup
	python -m bench.serving

bench-learning-curve: setup
	python -m bench.learning_curve

clean:  ## pipeline outputs only; the MLflow store and DVC cache are kept
	rm -rf data/origin data/split models reports/*.json reports/*.csv reports/*.png checkpoints
