# The two commands a new user needs: `make demo` and `make test`.
.PHONY: demo test install lint bench

install:
	./scripts/install.sh

demo: install
	.venv/bin/openmaker demo

test:
	./scripts/install.sh test
	.venv/bin/ruff check openmaker tests bench
	.venv/bin/ruff format --check openmaker tests bench
	.venv/bin/mypy openmaker tests bench
	.venv/bin/python -m pytest -q -n 3 --dist loadfile --durations=20

bench:
	./scripts/install.sh test
	.venv/bin/python -m bench
