"""The README's Python examples run as written (keeps the README true to the code)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {"__name__": "readme"}  # later blocks continue the earlier ones
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
