# Common commands; see docs/development.md and benchmarks/README.md.
.PHONY: test test-slow lint bench bench-full

test:
	pytest

test-slow:
	pytest -m "slow and not ray"

lint:
	ruff check . && ruff format --check .

# Quick benchmark subset (minutes on 2 CPU cores); figures go to benchmarks/RESULTS.md by hand.
bench:
	python benchmarks/cli_latency.py --repeats 5
	python benchmarks/sweep_memory.py --jobs 8 --model vgg16
	python benchmarks/input_pipeline.py --images 2000 --size 224 --repeats 5
	python benchmarks/train_throughput.py --models resnet50 mobilenet_v2 --sizes 32 --steps 4 --repeats 3

# The full training-throughput grid: 4 models x 32, 96, 224 px (about 40 minutes on 2 CPU cores).
bench-full:
	python benchmarks/train_throughput.py --sizes 32 --steps 10 --repeats 3
	python benchmarks/train_throughput.py --sizes 96 --steps 10 --repeats 3
	python benchmarks/train_throughput.py --sizes 224 --steps 5 --repeats 3
	python benchmarks/input_pipeline.py --images 500 --size 224 --repeats 3 --photo 1600x1200
