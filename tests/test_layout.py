"""The package layout as the architecture: each integration imports alone, and the shared
pieces below them (journey and note models, formats, transport, limiter) import none of them."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from worker.integrations import INTEGRATIONS, SINKS, SOURCES, WEBHOOKS

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "worker"
MODULES = sorted(p.stem for p in (WORKER / "integrations").glob("*.py") if p.stem != "__init__")
# Shared pieces: they must never reach up into an integration.
SHARED = [
    "journey",
    "note",
    "formats",
    "text",
    "events",
    "http",
    "ratelimit",
    "circuit",
    "errors",
    "sink",
    "source",
    "inbound",
    "integration",
    "signature",
    "store",
    "retry",
    "oauth",
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_each_integration_module_imports_alone(module: str) -> None:
    # A fresh interpreter, so nothing imported by another test hides a missing import.
    code = f"import worker.integrations.{module} as m; print(m.INTEGRATION.name)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == module


@pytest.mark.parametrize("module", SHARED)
def test_shared_modules_import_no_integration(module: str) -> None:
    imported = _imports(WORKER / f"{module}.py")
    reaching_up = sorted(n for n in imported if n.startswith("worker.integrations"))
    assert reaching_up == [], f"worker/{module}.py imports {reaching_up}"


def test_integration_modules_import_no_other_integration() -> None:
    for module in MODULES:
        imported = _imports(WORKER / "integrations" / f"{module}.py")
        others = sorted(n for n in imported if n.startswith("worker.integrations"))
        assert others == [], f"worker/integrations/{module}.py imports {others}"


def test_registry_lists_every_module_once() -> None:
    names = [i.name for i in INTEGRATIONS]
    assert sorted(names) == MODULES
    assert len(set(names)) == len(names)
    for name in MODULES:
        module = importlib.import_module(f"worker.integrations.{name}")
        assert module.INTEGRATION in INTEGRATIONS
    assert set(SOURCES) == {"datafast", "postmetric"}
    assert {s.name for s in SINKS} >= {"hubspot", "zendesk", "slack", "rocketchat"}
    assert "rocketchat" in WEBHOOKS
