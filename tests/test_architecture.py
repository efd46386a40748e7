"""Layout rules over the package source, checked on the AST of every module under fitloop/:

* no import cycles among fitloop modules (imports inside functions count; imports under `if TYPE_CHECKING:` don't);
* torch's private names (`torch._...`, optimizer hook dicts, `_orig_mod`, ...) only in fitloop/_fastpath.py;
* no module other than fitloop/trainer.py touches a private attribute of an object named `trainer`;
* imports point down the layers of docs/architecture.md (LAYERS), and nothing outside fitloop/cli imports it;
* imports sit at the top of their module, except optional extras and the modules whose imports are kept lazy
  for the command line's start-up (FUNCTION_IMPORTS_ALLOWED, each with its reason);
* no function has more than MAX_FUNCTION_LINES lines of code (size follows the job: modules have no cap).

The last test checks the checkers themselves on tiny synthetic packages.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fitloop"
FASTPATH = "fitloop/_fastpath.py"  # the one module allowed to use torch's private names
TRAINER = "fitloop/trainer.py"  # the one module allowed to touch the Trainer's private attributes
MAX_FUNCTION_LINES = 60  # lines of code: docstring, comments and blank lines left out

# The layers of docs/architecture.md, top (highest number) to bottom, by top-level module of the package.
# A module imports its own layer and those below, never one above. `fitloop` itself (the lazy facade that
# maps public names to their modules) is left out: every module may read `fitloop.__version__`.
LAYERS = {
    "cli": 8, "__main__": 8,
    "integrations": 7, "sklearn": 7,
    "tabular": 6,
    "tune": 5,
    "trainer": 4,
    "callbacks": 3, "diagnose": 3, "report": 3,
    "step": 2, "_fastpath": 2, "optim": 2, "evaluation": 2, "bundle": 2,
    "data": 1, "distributed": 1,
    "_lazy": 0, "config": 0, "files": 0, "extras": 0, "runlock": 0, "outputs": 0, "mlp_checks": 0,
    "devices": 0, "metrics": 0, "state": 0, "checkpoint_format": 0, "models": 0, "tabm": 0, "warn": 0,
}
# Function-level imports: optional extras and platform modules anywhere (imported where they are used, so that
# `import fitloop` stays light), and these modules' own lazy imports, each for the reason given.
OPTIONAL_TOP_NAMES = {"matplotlib", "mlflow", "fastapi", "uvicorn", "prometheus_client", "onnx", "onnxruntime",
                      "sklearn", "optuna", "tomli", "tomllib", "fcntl", "ctypes"}
OPTIONAL_PREFIXES = ("torch.utils.tensorboard", "torch.distributed", "torch._dynamo")
FUNCTION_IMPORTS_ALLOWED = {
    "fitloop/cli": "the command line's start-up: `fitloop --help` imports neither torch nor pyarrow",
    "fitloop/integrations/serve.py": "`fitloop --help` imports it for the serve flags; torch and pyarrow wait",
    "fitloop/integrations/serve_input.py": "imported with serve.py on the command line's start-up path",
    "fitloop/report/data.py": "`fitloop runs` and `fitloop report` read run directories without torch",
    "fitloop/report/summary.py": "fl.summary is imported by the torch-free report package",
    "fitloop/callbacks/progress.py": "rich is imported only when a live bar is drawn (the Trainer imports this)",
    "fitloop/files.py": "the version stamp needs torch; atomic writes on the CLI's start-up path do not",
    "fitloop/_fastpath.py": "torch.optim's private module names are looked up only when the shortcut is on",
    "fitloop/trainer.py": "trainer.report(): the report package (matplotlib's caller) loads when asked for",
    "fitloop/distributed/__init__.py": "rank and world size are read torch-free on the CLI's start-up path",
    "fitloop/data/stream.py": "pyarrow.dataset imports pandas where it is installed (0.3 s); the Trainer imports this",
    "fitloop/tabular/streaming.py": "pyarrow.dataset (pandas where installed); `fitloop train` imports this module",
}

PRIVATE_TORCH_NAMES = {"_opt_called", "__wrapped__", "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                       "_global_optimizer_pre_hooks", "_global_optimizer_post_hooks", "_orig_mod"}
PRIVATE_TORCH_PREFIXES = ("_amp_foreach",)  # torch._amp_foreach_non_finite_check_and_unscale_


# ------------------------------------------------------------------------------------------ helpers


def _private(name: str) -> bool:
    """A single-underscore name (`_x`), not a dunder (`__x__`)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Module name -> file for every .py under root/package; a package's `__init__.py` is the package."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _parse(f: Path) -> ast.Module:
    return ast.parse(f.read_text(encoding="utf-8"), filename=str(f))


def _rel(f: Path, root: Path) -> str:
    return f.relative_to(root).as_posix()


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node (module level, in functions, under try/if), except those under
    `if TYPE_CHECKING:` (its `else:` branch does run, so it counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, known) -> str | None:
    """`name` or its longest prefix that is a module of the package; None outside it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, known) -> list[str]:
    """The package modules one import statement executes (the most specific module of each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]  # the importing module's package
            up = node.level - 1
            if up > len(base):
                return []
            base = base[:len(base) - up]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        # `from X import n`: the submodule X.n when there is one, else X itself (n is a name defined in X)
        names = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in known else base_name for a in node.names]
    return [t for t in (_known(n, known) for n in names) if t is not None]


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, dict[str, str]]:
    """module -> {imported module: 'file:line' of the first such import}, self-imports left out."""
    mods = modules(root, package)
    graph: dict[str, dict[str, str]] = {m: {} for m in mods}
    for mod, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in sorted(_imports(_parse(f)), key=lambda n: n.lineno):
            for t in _targets(mod, is_pkg, node, mods):
                if t != mod:
                    graph[mod].setdefault(t, f"{_rel(f, root)}:{node.lineno}")
    return graph


def _sccs(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _shortest_cycle(graph: dict[str, dict[str, str]], start: str, within: set[str]) -> list[str]:
    """The shortest cycle start -> ... -> start inside `within` (BFS)."""
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w not in within:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return []


def import_cycles(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """One line per distinct shortest cycle through each module of each cyclic component, with the import
    locations: 'a -> b (a.py:3) -> a (b.py:7)'."""
    graph = import_graph(root, package)
    lines: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for comp in _sccs(graph):
        if len(comp) < 2:
            continue
        members = set(comp)
        for start in comp:
            cyc = _shortest_cycle(graph, start, members)
            i = cyc.index(min(cyc[:-1]))  # rotate: one spelling per cycle
            key = tuple(cyc[i:-1] + cyc[:i])
            if key in seen:
                continue
            seen.add(key)
            ring = list(key) + [key[0]]
            hops = [f"{b} ({graph[a][b]})" for a, b in zip(ring, ring[1:])]
            lines.append(f"[component {', '.join(comp)}] {ring[0]} -> " + " -> ".join(hops))
    return lines


def private_torch_uses(root: Path = ROOT, package: str = PACKAGE, allowed: str = FASTPATH) -> list[str]:
    """'file:line: what' for every use of torch's private names outside `allowed`."""
    out = []
    for f in modules(root, package).values():
        rel = _rel(f, root)
        if rel == allowed:
            continue
        tree = _parse(f)
        aliases = {"torch"}  # names bound to torch or something imported from it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "torch" or a.name.startswith("torch."):
                        aliases.add(a.asname or "torch")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "torch" or node.module.startswith("torch."):
                    aliases.update(a.asname or a.name for a in node.names)
        found: dict[tuple[int, int], str] = {}
        for node in ast.walk(tree):
            where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "torch" and any(_private(p) for p in a.name.split(".")):
                        found[where] = f"import {a.name}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[0] == "torch":
                    bad = [a.name for a in node.names if _private(a.name) or a.name in PRIVATE_TORCH_NAMES]
                    if any(_private(p) for p in parts) or bad:
                        found[where] = f"from {node.module} import {', '.join(a.name for a in node.names)}"
            elif isinstance(node, ast.Attribute):
                attr = node.attr
                if attr in PRIVATE_TORCH_NAMES or attr.startswith(PRIVATE_TORCH_PREFIXES):
                    found[where] = f".{attr}"
                elif attr == "_values" and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found[where] = "._values (a sparse tensor's private accessor)"
                elif _private(attr):
                    base = node.value
                    chain = []
                    while isinstance(base, ast.Attribute):
                        chain.append(base.attr)
                        base = base.value
                    if isinstance(base, ast.Name) and base.id in aliases:
                        found[where] = ".".join([base.id, *reversed(chain), attr])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # getattr(x, "_orig_mod")
                s = node.value
                parts = s.split(".")
                if (s in PRIVATE_TORCH_NAMES or s == "_values"
                        or (s.isidentifier() and s.startswith(PRIVATE_TORCH_PREFIXES))
                        or (parts[0] == "torch" and all(p.isidentifier() for p in parts)
                            and any(_private(p) for p in parts))):
                    found[where] = repr(s)
        out += [f"{rel}:{line}: {what}" for (line, _), what in sorted(found.items())]
    return out


def private_trainer_uses(root: Path = ROOT, package: str = PACKAGE, allowed: str = TRAINER) -> list[str]:
    """'file:line: trainer._x (read|write)' outside `allowed`, getattr/hasattr/setattr/delattr included."""
    out = []
    for f in modules(root, package).values():
        rel = _rel(f, root)
        if rel == allowed:
            continue
        found = []
        for node in ast.walk(_parse(f)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trainer"
                    and _private(node.attr)):
                kind = "read" if isinstance(node.ctx, ast.Load) else "write"
                found.append((node.lineno, f"trainer.{node.attr} ({kind})"))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
                  and isinstance(node.args[0], ast.Name) and node.args[0].id == "trainer"
                  and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                  and _private(node.args[1].value)):
                found.append((node.lineno, f"{node.func.id}(trainer, {node.args[1].value!r})"))
        out += [f"{rel}:{line}: {what}" for line, what in sorted(found)]
    return out


def _layer(module: str, package: str) -> int | None:
    parts = module.split(".")
    return None if len(parts) < 2 else LAYERS.get(parts[1])


def upward_imports(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """'a -> b (file:line)' for every import of a module in a higher layer (or of one LAYERS does not place)."""
    out = []
    for mod, targets in import_graph(root, package).items():
        here = _layer(mod, package)
        for target, where in targets.items():
            there = _layer(target, package)
            if target == package or mod == package:
                continue
            if here is None or there is None:
                out.append(f"{mod} -> {target} ({where}): place the module in LAYERS")
            elif there > here:
                out.append(f"{mod} -> {target} ({where})")
    return sorted(out)


def cli_importers(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """Modules outside `package.cli` (and `__main__`) that import it."""
    cli = f"{package}.cli"
    return sorted(f"{mod} -> {target} ({where})" for mod, targets in import_graph(root, package).items()
                  for target, where in targets.items()
                  if (target == cli or target.startswith(cli + ".")) and not (mod == cli or mod.startswith(cli + "."))
                  and mod != f"{package}.__main__")


def _function_imports(tree: ast.AST):
    """(import node, name) for every import inside a function body (TYPE_CHECKING blocks left out)."""
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in _imports(ast.Module(body=fn.body, type_ignores=[])):
            if isinstance(node, ast.Import):
                yield from ((node, a.name) for a in node.names)
            else:
                yield node, "." * node.level + (node.module or "")


def hidden_imports(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """'file:line: name' for each function-level import that is neither an optional extra nor in a module of
    FUNCTION_IMPORTS_ALLOWED."""
    out = set()
    for f in modules(root, package).values():
        rel = _rel(f, root)
        if any(rel == k or rel.startswith(k + "/") for k in FUNCTION_IMPORTS_ALLOWED):
            continue
        for node, name in _function_imports(_parse(f)):
            if name.split(".")[0] in OPTIONAL_TOP_NAMES or name.startswith(OPTIONAL_PREFIXES):
                continue
            out.add(f"{rel}:{node.lineno}: {name}")
    return sorted(out)


def _code_lines(lines: list[str], first: int, last: int) -> int:
    return sum(1 for text in lines[first - 1:last] if text.strip() and not text.strip().startswith("#"))


def long_functions(root: Path = ROOT, package: str = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'file:line name: N lines of code' for each function longer than `limit` (its docstring not counted)."""
    out = []
    for f in modules(root, package).values():
        text = f.read_text(encoding="utf-8")
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = fn.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                body = body[1:]
            n = _code_lines(lines, body[0].lineno, body[-1].end_lineno or body[-1].lineno)
            if n > limit:
                out.append(f"{_rel(f, root)}:{fn.lineno} {fn.name}: {n} lines of code (limit {limit})")
    return sorted(out)


# -------------------------------------------------------------------------------------------- tests


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles among fitloop modules (function-level imports count):\n" + "\n".join(cycles)


def test_private_torch_names_only_in_fastpath():
    uses = private_torch_uses()
    assert not uses, f"torch's private names outside {FASTPATH}:\n" + "\n".join(uses)


def test_no_private_trainer_attributes_outside_trainer():
    uses = private_trainer_uses()
    assert not uses, f"private Trainer attributes used outside {TRAINER}:\n" + "\n".join(uses)


def test_imports_point_down_the_layers():
    up = upward_imports()
    assert not up, "imports of a higher layer (docs/architecture.md, LAYERS):\n" + "\n".join(up)


def test_nothing_outside_the_cli_imports_it():
    users = cli_importers()
    assert not users, "library modules that import fitloop.cli (the top layer):\n" + "\n".join(users)


def test_imports_at_the_top_of_their_module():
    hidden = hidden_imports()
    assert not hidden, ("imports inside functions (move them to the top, or add the module to "
                        "FUNCTION_IMPORTS_ALLOWED with the reason):\n" + "\n".join(hidden))


def test_function_size():
    long = long_functions()
    assert not long, "functions to split where there is a seam:\n" + "\n".join(long)


def test_the_checkers_on_synthetic_packages(tmp_path):
    def write(files: dict[str, str]) -> Path:
        root = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        for name, src in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(src)
        return root

    base = {
        "pkg/__init__.py": "from .a import x\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\nx = 1\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/b.py": "from .a import x\nimport os\n",
        "pkg/sub/__init__.py": "from .c import y\n",
        "pkg/sub/c.py": "from ..a import x\nfrom . import d\nfrom pkg import b as bb\ny = 2\n",
        "pkg/sub/d.py": "import torch\n",
    }
    root = write(base)
    g = import_graph(root, "pkg")
    assert set(g["pkg.sub.c"]) == {"pkg.a", "pkg.sub.d", "pkg.b"}  # ../ and ./ resolved, submodule vs name
    assert g["pkg.sub"] == {"pkg.sub.c": "pkg/sub/__init__.py:1"} and g["pkg"] == {"pkg.a": "pkg/__init__.py:1"}
    assert set(g["pkg.b"]) == {"pkg.a"} and g["pkg.a"] == {}  # the TYPE_CHECKING import is skipped
    assert import_cycles(root, "pkg") == []

    # a function-level import, or one in the `else:` of `if TYPE_CHECKING:`, counts
    in_function = dict(base, **{"pkg/a.py": base["pkg/a.py"] + "def f():\n    from .b import B\n"})
    assert import_cycles(write(in_function), "pkg") == [
        "[component pkg.a, pkg.b] pkg.a -> pkg.b (pkg/a.py:6) -> pkg.a (pkg/b.py:1)"]
    else_branch = dict(base, **{"pkg/a.py": base["pkg/a.py"] + "else:\n    from . import b\n"})
    assert import_cycles(write(else_branch), "pkg") == [
        "[component pkg.a, pkg.b] pkg.a -> pkg.b (pkg/a.py:6) -> pkg.a (pkg/b.py:1)"]
    # absolute imports: `import pkg.sub.c` and `from pkg import b` (the submodule b)
    absolute = dict(base, **{"pkg/b.py": base["pkg/b.py"] + "import pkg.sub.c\n"})
    assert import_cycles(write(absolute), "pkg") == [
        "[component pkg.b, pkg.sub.c] pkg.b -> pkg.sub.c (pkg/b.py:3) -> pkg.b (pkg/sub/c.py:3)"]

    privates = write({
        "pkg/__init__.py": "",
        "pkg/_fastpath.py": "import torch._dynamo\ntorch._foreach_add_\n",
        "pkg/m.py": ("import torch\nimport torch.nn as nn\nfrom torch._dynamo import exc\n"
                     "from torch.optim.optimizer import _get_value\n"
                     "torch._amp_foreach_non_finite_check_and_unscale_(g, f, s)\nnn.Module._apply\n"
                     "getattr(m, '_orig_mod', m)\nfn.__wrapped__\nopt._opt_called\ng._values()\n"
                     "torch.optim.Optimizer._optimizer_step_pre_hooks\ntorch.__version__\nself._values()\n"
                     "trainer._needs_closure\ntrainer._x = 1\ngetattr(trainer, '_y')\ntrainer.__class__\n"
                     "trainer.config\nother._z\n"),
    })
    uses = private_torch_uses(root=privates, package="pkg", allowed="pkg/_fastpath.py")
    assert [u.split(":")[1] for u in uses] == ["3", "4", "5", "6", "7", "8", "9", "10", "11"], uses
    assert all(u.startswith("pkg/m.py:") for u in uses)
    assert private_trainer_uses(root=privates, package="pkg", allowed="pkg/trainer.py") == [
        "pkg/m.py:14: trainer._needs_closure (read)", "pkg/m.py:15: trainer._x (write)",
        "pkg/m.py:16: getattr(trainer, '_y')"]

    # layers, the CLI on top, imports at the top, function sizes
    layered = write({
        "pkg/__init__.py": "",
        "pkg/cli/__init__.py": "from ..trainer import T\n",
        "pkg/trainer.py": "from .data import d\nT = 1\n",
        "pkg/data.py": ("import os\nd = 1\ndef f():\n    import matplotlib.figure\n    from .trainer import T\n"
                        "    from .cli import x\n    import json\n"),
        "pkg/odd.py": "x = 1\n",
        "pkg/user.py": "from .odd import x\n",
    })
    assert upward_imports(layered, "pkg") == [
        "pkg.data -> pkg.cli (pkg/data.py:6)", "pkg.data -> pkg.trainer (pkg/data.py:5)",
        "pkg.user -> pkg.odd (pkg/user.py:1): place the module in LAYERS"]
    assert cli_importers(layered, "pkg") == ["pkg.data -> pkg.cli (pkg/data.py:6)"]
    assert hidden_imports(layered, "pkg") == ["pkg/data.py:5: .trainer", "pkg/data.py:6: .cli",
                                              "pkg/data.py:7: json"]
    body = "".join(f"    x{i} = {i}  # a comment\n\n    # another\n" for i in range(5))
    sized = write({"pkg/__init__.py": "", "pkg/m.py": f'def f():\n    """Doc.\n\n    More.\n    """\n{body}'})
    assert long_functions(sized, "pkg", limit=5) == []
    assert long_functions(sized, "pkg", limit=4) == ["pkg/m.py:1 f: 5 lines of code (limit 4)"]
