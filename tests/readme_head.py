"""The bring-your-own-head example of docs/bring_your_own_head.md, written out as an importable module."""

import re

from data_paths import REPO_ROOT

# The manual page that holds the example (it moved there from the README).
BYO_HEAD_PAGE = REPO_ROOT / 'docs' / 'bring_your_own_head.md'


def readme_head_code() -> str:
  """The first Python block after the `<!-- byo-head -->` marker of docs/bring_your_own_head.md."""
  section = BYO_HEAD_PAGE.read_text().split('<!-- byo-head -->', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def write_readme_head(folder) -> str:
  """Writes the head as `folder/my_heads/blobs.py`; returns its dotted path (put `folder` on
  sys.path or PYTHONPATH to import it)."""
  package = folder / 'my_heads'
  package.mkdir(parents=True, exist_ok=True)
  (package / '__init__.py').write_text('')
  (package / 'blobs.py').write_text(readme_head_code())
  return 'my_heads.blobs'
