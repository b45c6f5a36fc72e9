"""One import namespace (`ssmlens`), nothing else installed at the top level, and no
collision with other distributions' generic module names (issue 11).

Hugging Face's ``kernels`` (which transformers and TransformerLens' TransformerBridge
import) once collided with our ``kernels/`` folder; these tests run in fresh
interpreters started outside the repository, as a user's would be.
"""

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import ssmlens

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

pytestmark = pytest.mark.smoke


def _run_fresh(code: str, cwd: Path, timeout: int = 300) -> str:
    """Run ``code`` in a new interpreter whose working directory is ``cwd`` (not the repo)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _package_folders() -> set[str]:
    """Every folder under the subpackages that holds an __init__.py, as a dotted name."""
    names = {"ssmlens"}
    for sub in ssmlens.SUBPACKAGES:
        for init in (ROOT / sub).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            names.add("ssmlens." + ".".join(rel.parts))
    return names


def test_distribution_has_one_top_level_module():
    dist = importlib.metadata.distribution("ssmlens")
    assert dist.read_text("top_level.txt").split() == ["ssmlens"]
    assert dist.version == ssmlens.__version__
    assert [ep.value for ep in dist.entry_points if ep.name == "ssmlens"] == ["ssmlens.interp.cli:main"]


def test_pyproject_lists_every_subpackage():
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {
        "ssmlens": "ssmlens", **{f"ssmlens.{sub}": sub for sub in ssmlens.SUBPACKAGES}}
    data_only = set(PYPROJECT["tool"]["setuptools"]["package-data"])  # folders of css/js, no modules
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == _package_folders() | data_only


def test_repository_root_is_not_a_package():
    """pytest imports a directory's __init__.py under the directory's own name: a root
    __init__.py made a checkout called ``ray/`` shadow the real Ray in the tests."""
    assert not (ROOT / "__init__.py").exists()
    assert (ROOT / "ssmlens" / "__init__.py").is_file()


def test_wheel_holds_only_ssmlens(tmp_path):
    """A built wheel has exactly two top-level entries, ``ssmlens/`` and its
    dist-info, with every module of the repository's package folders and the
    dashboard's assets."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("ssmlens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"ssmlens", f"ssmlens-{ssmlens.__version__}.dist-info"}
    expected = {"ssmlens/__init__.py", "ssmlens/__main__.py"}
    for sub in ssmlens.SUBPACKAGES:
        expected |= {f"ssmlens/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / sub).rglob("*.py")}
    expected |= {f"ssmlens/dashboards/assets/{p.name}" for p in (ROOT / "dashboards/assets").iterdir()}
    assert expected <= set(names), sorted(expected - set(names))


def test_every_module_imports_beside_hf_kernels_and_transformer_lens(tmp_path):
    """In one fresh process outside the repo: Hugging Face's ``kernels``,
    transformers' Mamba, TransformerLens' bridge and every ssmlens module."""
    modules = sorted(
        "ssmlens." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for sub in ssmlens.SUBPACKAGES for p in (ROOT / sub).rglob("*.py")
        if p.name != "__main__.py"
    )
    out = _run_fresh(f"""
        import importlib, json
        import kernels
        import transformers.models.mamba.modeling_mamba
        import transformer_lens.model_bridge
        import ssmlens
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps([kernels.__file__, ssmlens.__file__, ssmlens.kernels.selective_scan.__module__]))
    """, tmp_path)
    hf_kernels, ours, scan_module = json.loads(out.splitlines()[-1])
    assert "site-packages" in hf_kernels and not hf_kernels.startswith(str(ROOT / "kernels"))
    assert scan_module == "ssmlens.kernels.scan"


def test_transformer_lens_bridge_and_ssmlens_agree_in_one_process(tmp_path):
    """A tiny random MambaForCausalLM booted by TransformerLens' TransformerBridge and
    loaded by ``Mamba.from_hf`` in the same process gives the same logits."""
    ckpt = tmp_path / "mamba-hf"
    out = _run_fresh(f"""
        import json
        import torch
        from transformers import MambaConfig, MambaForCausalLM
        from transformer_lens.model_bridge import TransformerBridge
        from ssmlens.models import Mamba

        torch.manual_seed(0)
        cfg = MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4)
        MambaForCausalLM(cfg).save_pretrained({str(ckpt)!r})
        bridge = TransformerBridge.boot_transformers({str(ckpt)!r}, device="cpu")
        ours = Mamba.from_hf({str(ckpt)!r}).eval()
        tokens = torch.randint(0, 64, (2, 12))
        with torch.no_grad():
            a, b = bridge(tokens), ours(tokens)
        print(json.dumps([list(a.shape), float((a - b).norm() / b.norm())]))
    """, tmp_path)
    shape, rel = json.loads(out.splitlines()[-1])
    assert shape == [2, 12, 64]
    assert rel < 1e-5


def test_cli_runs_as_module_outside_the_repo(tmp_path):
    out = _run_fresh("""
        import runpy, sys
        sys.argv = ["ssmlens", "--help"]
        try:
            runpy.run_module("ssmlens", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
    """, tmp_path)
    assert "usage: ssmlens" in out
