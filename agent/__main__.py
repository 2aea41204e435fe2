"""``python -m agent --server URL --reader NAME [--token T]`` (DESIGN.md §8 contract)."""

from agent.cli import main

raise SystemExit(main())
