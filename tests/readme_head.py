"""The README's bring-your-own-head example, written out as an importable module."""

import re

from data_paths import REPO_ROOT


def readme_head_code() -> str:
  """The first Python block after the README's `<!-- byo-head -->` marker."""
  section = (REPO_ROOT / 'README.md').read_text().split('<!-- byo-head -->', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def write_readme_head(folder) -> str:
  """Writes the head as `folder/my_heads/blobs.py`; returns its dotted path (put `folder` on
  sys.path or PYTHONPATH to import it)."""
  package = folder / 'my_heads'
  package.mkdir(parents=True, exist_ok=True)
  (package / '__init__.py').write_text('')
  (package / 'blobs.py').write_text(readme_head_code())
  return 'my_heads.blobs'
