"""Every Python block of the README and docs/*.md runs as written: in a fresh namespace, in a temporary folder.

Long blocks run with tiny sizes through the substitutions in SHRINK (each must apply, so a changed block is
noticed). A block that needs real data on disk may be skipped with the line ``<!-- docs-test: skip -->``
right above it; keep that rare.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(<!-- docs-test: skip -->\s*\n)?```python\n(.*?)```", re.S)

# (file name, text in the block) -> tiny replacement: training runs of thousands of steps become a few steps.
SHRINK = {
    ("training.md", 'steps=4000, out_dir="runs/roll"'): 'steps=3, n_data=64, width=8, depth=1, batch_size=16, '
                                                        'sample_every=10, progress=False, out_dir="runs/roll"',
    ("README.md", "(10_000, 2)"): "(500, 2)",
    ("README.md", "range(10_000)"): "range(500)",
    ("paths.md", "steps=300, width=64, depth=2"): "steps=5, width=8, depth=1, batch_size=32, n_samples=4, "
                                                   "sample_steps=2",
    ("paths.md", "torch.randn(2048, 2"): "torch.randn(64, 2",
}


def blocks():
    for path in FILES:
        for k, match in enumerate(BLOCK.finditer(path.read_text())):
            skip = pytest.mark.skip(reason="marked docs-test: skip") if match.group(1) else ()
            yield pytest.param(path.name, match.group(2), id=f"{path.name}-{k}", marks=skip)


def test_the_docs_have_python_blocks():
    names = {p.values[0] for p in blocks()}
    assert {"README.md", "training.md"} <= names


@pytest.mark.parametrize("name,code", list(blocks()))
def test_python_block_runs(name, code, tmp_path, monkeypatch):
    for (file, old), new in SHRINK.items():
        if file == name and old in code:
            code = code.replace(old, new)
    for (file, old), _ in SHRINK.items():
        assert not (file == name and old in code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    exec(compile(code, f"{name} block", "exec"), {"__name__": "__docs__"})


def test_every_shrink_is_used():
    text = {p.name: p.read_text() for p in FILES}
    for (file, old) in SHRINK:
        assert old in text[file], f"{file} no longer holds {old!r}: update SHRINK"
