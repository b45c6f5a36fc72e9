"""The README's Python examples run as written (keeps the README true to the code)."""

import linecache
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {"__name__": "readme"}  # later blocks continue the earlier ones
    for i, code in enumerate(blocks):
        # nnsight reads the source of a traced block: register it under its own name
        name = f"<README.md python block {i}>"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        exec(compile(code, name, "exec"), namespace)
