"""`python -m bn_repro.sweeps`: the sweep runner (bn_repro.sweeps.cli)."""

from bn_repro.sweeps import cli

if __name__ == "__main__":
  cli.run()
