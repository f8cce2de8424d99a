# One target per thing a developer does. `make run` and `make test` are the two
# set-up commands of the README: each installs what it needs first.
.PHONY: deps run stop status test lint typecheck test-unit test-integration test-e2e test-faults test-security bench bench-plumbing bench-pipeline bench-floor bench-scale

deps:
	@bash deploy/local/prerequisites.sh

run: deps
	uv run python deploy/local/marketplace.py up

stop:
	uv run python deploy/local/marketplace.py down

status:
	uv run python deploy/local/marketplace.py status

lint: deps
	uv run ruff check .
	uv run ruff format --check .

typecheck: deps
	uv run mypy .

test-unit: deps
	uv run pytest tests/unit

test-integration: deps
	uv run pytest tests/integration

test-e2e: deps
	uv run pytest tests/e2e

# The crash tests with many seeds (CI runs one per scenario); a failure prints its
# seed: replay it with `make test-faults FAULT_SEEDS=<seed>`.
FAULT_SEEDS ?= 1 2 3 4 5 6 7 8
test-faults: deps
	FAULT_SEEDS="$(FAULT_SEEDS)" uv run pytest -m faults tests/e2e

test-security: deps
	uv run pytest tests/security

# The whole suite: static checks, then every test level in one pytest run.
test: lint typecheck
	uv run pytest

bench: deps
	uv run python -m bench.catalog_browse
	uv run python -m bench.settlement_backlog
	uv run python -m bench.settlement_steady
	uv run python -m bench.orders_place --profile
	uv run python -m bench.pipeline --profile orders

# The three services end to end under increasing offered load, beside the raw
# limits; writes bench/results/pipeline.md and pipeline.png.  Uses
# TEST_KAFKA_BOOTSTRAP/TEST_PG_DSN when set, else starts its own servers.
bench-pipeline: deps
	uv run python -m bench.pipeline --profile orders

# Only the floor per order (an order's raw work done bare, the cheapest way),
# after one short step that counts what an order writes; prints, writes nothing.
bench-floor: deps
	uv run python -m bench.pipeline --floor-only

# One process against two, of orders (placement, relay) and of settlement (catch-up);
# writes bench/results/scale-out.md.  Uses TEST_KAFKA_BOOTSTRAP/TEST_PG_DSN when set.
bench-scale: deps
	uv run python -m bench.scale_out

# Consumers and the relay beside raw Kafka and PostgreSQL; uses
# TEST_KAFKA_BOOTSTRAP/TEST_PG_DSN when set, else starts its own servers.
bench-plumbing: deps
	uv run python -m bench.plumbing

# A co-sell day played against the marketplace `make run` started; flags via
# ARGS, e.g. make demo ARGS="--orders 500 --concurrency 32 --seed 3".
.PHONY: demo
demo: deps
	uv run python -m deploy.demo $(ARGS)
