"""The package's layers stay apart: the config module only parses, distributed.py is the transport,
the entry points live in swarmkern.runner, and production code never imports the test fixtures."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "swarmkern"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_production_code_does_not_import_the_test_fixtures():
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if p.name != "testing.py" and "swarmkern.testing" in _imported_modules(p))
    assert offenders == []


def test_config_module_only_parses():
    code = ("import sys, swarmkern.config as c; "
            "print(sorted(m for m in ('swarmkern.runner', 'swarmkern.distributed', 'swarmkern.utilities.common') "
            "if m in sys.modules)); print([n for n in ('run_search', 'resume_search', 'save_run_config') if hasattr(c, n)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.split("\n")
    assert out[:2] == ["[]", "[]"]


def test_distributed_is_the_transport_and_runner_the_policy():
    import swarmkern.distributed as dist
    import swarmkern.runner as runner

    assert not hasattr(dist, "launch_search") and not hasattr(dist, "launch_resume")
    assert callable(runner.launch_search) and callable(runner.launch_resume) and callable(runner.run_search)
    assert "swarmkern.runner" not in _imported_modules(PACKAGE / "distributed.py")
