"""The package's layers, as the README's Architecture section draws them, hold in the imports.

Imports flow one way: commands and lab on top, then the HA cycle and the runtime that wires it,
then the AWS and host adapters, then the pure core (config, decide, metrics, logging) and the
coordinator. Every ``import`` in every module (at the top or inside a function) is checked, and
the module graph has no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Lower number = lower layer. A module may import its own layer or any lower one.
LAYERS: dict[str, int] = {
    "coordinator": 0,
    "agent": 1,  # agent/__init__.py, config, decide, metrics, logsetup
    "agent.aws": 2,
    "agent.host": 2,
    "agent.cycle": 3,
    "agent.runtime": 3,
    "agent.service": 3,
    "agent.ctsync": 3,  # the connection-sync service (its own process, nat-ha ctsync)
    "agent.memberwatch": 3,
    "agent.watches": 3,
    "agent.handoff": 3,
    "agent.commands": 4,
    "agent.lab": 4,
}
# Adapters of one kind do not reach into the other: EC2 code knows nothing of the host and back.
SEPARATE = {("agent.aws", "agent.host"), ("agent.host", "agent.aws")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    best = ""
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return best


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("agent", "coordinator")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for top in ("agent", "coordinator") for p in (REPO / top).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    assert all(layer_of(m) for m in graph()), [m for m in graph() if not layer_of(m)]


def test_imports_flow_downwards_only() -> None:
    wrong = []
    for mod, deps in sorted(graph().items()):
        for dep in sorted(deps):
            a, b = layer_of(mod), layer_of(dep)
            if LAYERS[b] > LAYERS[a] or (a, b) in SEPARATE:
                wrong.append(f"{mod} ({a}) imports {dep} ({b})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycle.extend([*path[path.index(dep) :], dep] if dep in path else [node, dep])
                return True
            if state.get(dep) is None and visit(dep, [*path, dep]):
                return True
        state[node] = 2
        return False

    for start in sorted(g):
        if state.get(start) is None and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_checker_sees_a_violation() -> None:
    # The rules are not vacuous: the real graph has edges between layers, and an upward edge is caught.
    g = graph()
    assert "agent.aws.ec2" in g["agent.cycle.tables"]
    assert LAYERS[layer_of("agent.commands.daemon")] > LAYERS[layer_of("agent.cycle")]
