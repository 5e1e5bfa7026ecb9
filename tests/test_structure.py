"""House rules a reader relies on: no import cycle inside the package, no class past 200 lines, each output-file name
spelled in `outputs` only, and one strategy registry that the run, compare, the freeze report and the card read."""

import ast
import re
from pathlib import Path

from hftransfer import outputs, strategies

PACKAGE = Path(__file__).resolve().parent.parent / "hftransfer"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Modules of the package that `name` imports anywhere, lazily inside functions too (a cycle is a cycle)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle_inside_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}

    def reaches(start, target, seen):
        return any(n == target or (n not in seen and not seen.add(n) and reaches(n, target, seen))
                   for n in graph[start])

    cycles = sorted(name for name in graph if reaches(name, name, set()))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_no_class_is_longer_than_200_lines():
    long = [f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200]
    assert not long


def test_output_file_names_are_spelled_only_in_outputs():
    names = [value for key, value in vars(outputs).items() if key.isupper() and isinstance(value, str)
             and "." in value and value not in (outputs.CONFIG, outputs.CARD)]  # transformers' and the Hub's own
    assert len(names) >= 8
    for path in PACKAGE.rglob("*.py"):
        if path.name == "outputs.py":
            continue
        code = re.sub(r'"""[\s\S]*?"""', "", path.read_text())  # docstrings may name files for the reader
        code = "\n".join(line.split("#", 1)[0] for line in code.splitlines())
        spelled = [name for name in names if f'"{name}"' in code or f"'{name}'" in code]
        assert not spelled, f"{path.name} spells {spelled}"


def test_one_strategy_registry_serves_the_run_compare_the_freeze_report_and_the_card():
    from hftransfer import args, cli, compare

    parser_choices = next(f.metadata["choices"] for f in args.fields(args.TransferArguments) if f.name == "strategy")
    assert set(parser_choices) == set(strategies.STRATEGIES) == set(strategies.DESCRIPTIONS)
    assert set(compare.COMPARED) <= set(strategies.STRATEGIES)
    assert cli.STRATEGIES is strategies.STRATEGIES  # the freeze report's choices
    for name, specs in strategies.STRATEGIES.items():
        assert specs and all(spec.kind in (strategies.HEAD, strategies.BASE, strategies.ADAPTERS) for spec in specs)
    assert [s.kind for s in strategies.STRATEGIES["staged"]] == ["head", "base"]
