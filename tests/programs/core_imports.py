"""Imports modules with packages blocked, in an interpreter of its own; prints 'imported N' once all N imported.

    python tests/programs/core_imports.py '{"modules": [...], "forbidden": [...], "forbidden_own": [...]}'

forbidden: top-level packages none of the modules may import; forbidden_own: prefixes of module names they may
not import either (the I/O side of ddpm_jax). tests/test_layering.py runs it on the pure core.
"""
import importlib
import importlib.abc
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Blocker(importlib.abc.MetaPathFinder):
  """Fails every import of a forbidden package or module; finds nothing itself."""

  def __init__(self, forbidden, forbidden_own):
    self.forbidden, self.forbidden_own = set(forbidden), tuple(forbidden_own)

  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in self.forbidden or name in self.forbidden or name.startswith(self.forbidden_own):
      raise ImportError(f'the pure core imported {name}')


def main(spec: dict) -> None:
  sys.path.insert(0, ROOT)  # as `python -c` in the repository's root
  sys.meta_path.insert(0, Blocker(spec['forbidden'], spec['forbidden_own']))
  for module in spec['modules']:
    importlib.import_module(module)
  print('imported', len(spec['modules']))


if __name__ == '__main__':
  main(json.loads(sys.argv[1]))
