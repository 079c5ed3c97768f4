"""The layering that docs/architecture.md draws, checked on the source itself.

Dependencies point down (sim → node → crypto, topology → murmur.errors); each heavy
dependency is imported by one module only; importing the node changes no global state.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("murmur", "crypto", "topology", "node", "sim")
# What each package may import of the project (murmur.errors is the shared error root).
ALLOWED = {
    "murmur": set(),
    "crypto": {"murmur"},
    "topology": {"murmur"},
    "node": {"murmur", "crypto", "topology"},
    "sim": {"murmur", "crypto", "topology", "node"},
}
HEAVY = {  # dependency → the one module (or package) that may import it
    "tenseal": "crypto/ckks.py",
    "opacus": "node/training/dp/",
    "libp2p": "node/transport/p2p/",  # a folder: the one package that may
    "trio": "node/transport/p2p/",
    "aiomqtt": "node/telemetry.py",
    "nilearn": "sim/brats/anatomy.py",
    "monai": "node/training/segmentation/",
}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth (lazy ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_down(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path) & set(PACKAGES)
        if name != package and name not in ALLOWED[package]
    }
    assert not wrong


def test_each_heavy_dependency_is_imported_in_one_module() -> None:
    users: dict[str, set[str]] = {name: set() for name in HEAVY}
    for package in PACKAGES:
        for path in _modules(package):
            for name in _imports(path) & set(HEAVY):
                users[name].add(str(path.relative_to(ROOT)))
    # Each dependency is used in its one module, or only inside its one package.
    for name, place in HEAVY.items():
        assert users[name], f"{name} is not used where it is declared"
        if place.endswith("/"):
            assert all(user.startswith(place) for user in users[name]), (name, users[name])
        else:
            assert users[name] == {place}, (name, users[name])


def test_importing_the_node_loads_no_heavy_dependency_and_patches_nothing() -> None:
    """A plaintext site without telemetry never loads TenSEAL, Opacus or aiomqtt; importing
    the libp2p transport and DP engine leaves the library's constants and warnings alone."""
    probe = """
import json, sys, warnings
import node.cli, node.runtime, node.config
loaded = sorted(m for m in ("tenseal", "opacus", "aiomqtt", "monai") if m in sys.modules)
from libp2p.stream_muxer.yamux import yamux
size = yamux.MAX_MESSAGE_SIZE
import node.transport.p2p
from node.training.dp import accounting
quiet = [f for f in warnings.filters if f[1] and any(f[1].match(m) for m in accounting.QUIET)]
print(json.dumps({"loaded": loaded, "same_size": yamux.MAX_MESSAGE_SIZE == size,
                  "same_filters": not quiet}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "loaded": [],
        "same_size": True,
        "same_filters": True,
    }
