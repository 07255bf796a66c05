"""The rules of the tree, read from the imports (as httpx's test_exported_members does).

Each package's ``__init__`` says what it may import; these tests hold the code to it:
the web side uses only ``gpu_pool.__all__`` and never loads torch, torch lives in
``gpu_pool/model`` alone, the engine side never reaches into the web side, the engine
drives the model through its torch-free port and loads it in its entry point only, the
wire format and process set-up import no other part, the client library imports only
its three packages, and tests and benchmarks share ``testkit`` instead of importing each
other (nor does one test module import another).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import gpu_pool

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("embsvc", "gpu_pool", "runtime")
HEAVY = ("torch", "transformers", "FlagEmbedding")


@dataclass(frozen=True)
class Import:
    path: Path  # relative to ROOT
    module: str  # the imported module, absolute
    names: tuple[str, ...]  # ``from module import names``; empty for ``import module``

    def under(self, *packages: str) -> bool:
        return any(self.module == p or self.module.startswith(p + ".") for p in packages)

    def where(self) -> str:
        return f"{self.path}: {self.module}" + (f" ({', '.join(self.names)})" if self.names else "")


def imports(*folders: str) -> Iterator[Import]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield Import(path.relative_to(ROOT), alias.name, ())
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    yield Import(path.relative_to(ROOT), node.module, tuple(a.name for a in node.names))


def in_package(imp: Import, *packages: str) -> bool:
    return any(imp.path.parts[: len(p.split("/"))] == tuple(p.split("/")) for p in packages)


def test_the_web_side_uses_only_what_gpu_pool_exports():
    exported = set(gpu_pool.__all__)
    wrong = [imp.where() for imp in imports("embsvc") if imp.under("gpu_pool")
             and (imp.module != "gpu_pool" or not set(imp.names) <= exported)]
    assert not wrong, f"embsvc reaches past gpu_pool.__all__: {wrong}"


def test_gpu_pool_exports_exist():
    missing = [name for name in gpu_pool.__all__ if not hasattr(gpu_pool, name)]
    assert not missing


def test_torch_is_imported_only_in_gpu_pool_model():
    wrong = [imp.where() for imp in imports(*PRODUCT) if imp.under(*HEAVY) and not in_package(imp, "gpu_pool/model")]
    assert not wrong, f"torch or transformers outside gpu_pool/model: {wrong}"


def test_the_engine_side_never_imports_the_web_side():
    wrong = [imp.where() for imp in imports("gpu_pool", "runtime") if imp.under("embsvc", "falcon", "gunicorn")]
    assert not wrong


def test_runtime_and_wire_stand_alone():
    """Process set-up and the wire format are imported by every process: they import no other part."""
    wrong = [imp.where() for imp in imports("runtime") if imp.under("gpu_pool", "embsvc")]
    wrong += [imp.where() for imp in imports("gpu_pool/wire")
              if imp.under("gpu_pool") and not imp.under("gpu_pool.wire")]
    assert not wrong


def test_core_knows_nothing_of_http():
    wrong = [imp.where() for imp in imports("embsvc/core") if imp.under("falcon", "embsvc.api", "embsvc.master")]
    assert not wrong


def test_the_engine_loads_the_model_only_in_its_entry_point():
    """gpu_pool/engine reaches gpu_pool/model through engine/main.py alone (and the torch-free
    port it drives), so the master, which imports the engine's spec and entry, never loads torch."""
    wrong = [imp.where() for imp in imports("gpu_pool") if imp.under("gpu_pool.model")
             and not imp.under("gpu_pool.model.port")
             and not in_package(imp, "gpu_pool/model") and imp.path != Path("gpu_pool/engine/main.py")]
    assert not wrong


def test_the_model_never_imports_the_engine():
    """The engine drives the model through ``gpu_pool/model/port.py``; the model knows nothing of it."""
    wrong = [imp.where() for imp in imports("gpu_pool/model") if imp.under("gpu_pool.engine")]
    assert not wrong


def test_the_port_is_torch_free():
    wrong = [imp.where() for imp in imports("gpu_pool/model") if imp.path == Path("gpu_pool/model/port.py")
             and (imp.under(*HEAVY) or (imp.under("gpu_pool") and not imp.under("gpu_pool.wire")))]
    assert not wrong


def test_product_code_never_imports_tests_testkit_or_bench():
    wrong = [imp.where() for imp in imports(*PRODUCT) if imp.under("tests", "testkit", "bench")]
    assert not wrong


def test_the_client_imports_only_httpx_numpy_tqdm_and_the_standard_library():
    """Users copy embsvc_client into their programs and install just those three (its docstring says so)."""
    allowed = {"httpx", "numpy", "tqdm", "embsvc_client", *sys.stdlib_module_names}
    wrong = [imp.where() for imp in imports("embsvc_client") if imp.module.split(".")[0] not in allowed]
    assert not wrong


def test_bench_and_testkit_never_import_tests():
    wrong = [imp.where() for imp in imports("bench", "testkit") if imp.under("tests")]
    assert not wrong, "shared helpers belong in testkit/"


def test_no_test_module_imports_another():
    """Each runs alone: what tests share lives in their layer's conftest.py, a helper module or testkit."""
    wrong = [imp.where() for imp in imports("tests") if imp.under("tests")
             and imp.module.rsplit(".", 1)[-1].startswith("test_")]
    assert not wrong, "shared helpers belong in a conftest.py or testkit/"


@pytest.mark.parametrize("package", sorted({p.parent for p in ROOT.glob("*/**/__init__.py")
                                            if p.parts[len(ROOT.parts)] in (*PRODUCT, "testkit", "embsvc_client")}))
def test_every_package_says_what_it_is(package: Path):
    """The first lines of each package's docstring: runs in, may import, owns, entry points."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    for heading in ("Runs in:", "May import:", "Owns:", "Entry points:"):
        assert heading in doc, f"{package.relative_to(ROOT)}/__init__.py lacks {heading!r}"


def test_a_web_worker_never_loads_torch():
    code = ("import sys, embsvc.app, embsvc.master.hooks, gpu_pool; "
            "assert not {'torch', 'transformers'} & set(sys.modules), 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
