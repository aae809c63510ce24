"""What a stage depends on, derived from the code: the project modules it imports (transitively, including
imports inside functions) and the params keys it declares and is held to. A module that reads package data
declares it with a module-level `DATA_FILES = ("name.json", ...)` (paths relative to the module's folder):
those files are code deps too, so editing them reruns the stage.

`dvc.yaml` must list exactly these (tests/pipeline/test_dvc.py compares them), so that a change to a module a
stage runs reruns it, and a change to anything else never does. The CLI (pipeline/cli.py) is not a dep: it
only parses arguments and calls a stage's `run()`.

    python -m pipeline.deps            prints each stage's code deps and params, as dvc.yaml should hold them
    python -m pipeline.deps --write    rewrites them in dvc.yaml, and the ingest stages (one per data.sources
                                       entry, and the merge) as a whole (everything else in the file is kept)
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("esva", "pipeline")

# dvc.yaml stage -> the stage modules its commands run
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "synth": ("pipeline.stages.synth",), "ingest-source": ("pipeline.stages.ingest",), "ingest": ("pipeline.stages.ingest",),
    "decode": ("pipeline.stages.decode",), "crop": ("pipeline.stages.crop",), "extract": ("pipeline.stages.extract",),
    "sync-baseline": ("pipeline.stages.sync",), "train": ("pipeline.stages.train",),
    "ablate": ("pipeline.stages.train",), "lm": ("pipeline.stages.lm",), "tune": ("pipeline.stages.tune",),
    "tune_ablation": ("pipeline.stages.tune", "pipeline.stages.evaluate"),
    "evaluate": ("pipeline.stages.evaluate",), "mechanism": ("pipeline.stages.mechanism",),
    "adaptive": ("pipeline.stages.adaptive",), "evaluate_controller": ("pipeline.stages.evaluate",),
    "report": ("pipeline.stages.report",),
}
# a stage whose params are not its modules' PARAMS: the module attribute that declares them
STAGE_PARAMS: dict[str, str] = {"ingest-source": "SOURCE_PARAMS", "ablate": "ABLATE_PARAMS"}
# a foreach stage whose items read different keys: the declared key -> the foreach item's field that names
# what each item reads in its place (ablate: `msfe`, or `ablate` again for a variant without MSFE; DVC
# reads a key listed twice once). params_keys(stage, ITEM) gives one item's keys.
ITEM_PARAMS: dict[str, dict[str, str]] = {"ablate": {"msfe": "${item.msfe_params}"}}

# stages that `--write` emits whole (data deps, outs, comments), their code deps and params filled in as for
# every stage: one ingest stage per data.sources entry (a foreach over the params list, so adding a source
# needs no edit here) and the merge, which depends on the folder of their outputs
GENERATED: dict[str, str] = {
    "ingest-source": """\
  ingest-source:
    # one stage per data.sources entry: ingest-source@0, @1, ... in the list's order (DVC names a list's
    # items by index). Its dataset root is a dep and its entry is on its command line, so a change to one
    # dataset's files or entry reruns its own stage and the merge, never another source's
    foreach: ${data.sources}
    do:
      cmd: esva ingest-source ${item.name} --adapter ${item.adapter} --root "${item.root}" --out data/sources/${item.name}.parquet
      deps:
        - ${item.root}
      params:
      outs:
        - data/sources/${item.name}.parquet
        - metrics/skips/ingest/${item.name}.csv:
            cache: false
      metrics:
        - metrics/ingest/${item.name}.json:
            cache: false""",
    "ingest": """\
  ingest:
    # the merge: the per-source files of the sources data.sources lists now (a stale one of a removed source is
    # ignored) -> roles and the leakage guard on the stored content keys -> the manifest. The folder is the dep:
    # DVC puts every ingest-source stage upstream of it
    cmd: esva ingest --from data/sources --out data/manifest.parquet
    deps:
      - data/sources
    params:
    outs:
      - data/manifest.parquet
      - metrics/skips/ingest.csv:
          cache: false
    metrics:
      - metrics/ingest.json:
          cache: false""",
}


def module_path(name: str) -> Path | None:
    """The file of a project module (a package's __init__.py), or None when it is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported(path: Path, name: str) -> set[str]:
    """Project modules named by the import statements of one file, anywhere in it (functions included).
    Importing a.b.c runs a, a.b and a.b.c; `from a.b import c` runs a.b.c too when c is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                if module_path(sub) is not None:
                    found.add(sub)
    return found


@lru_cache(maxsize=None)
def closure(roots: tuple[str, ...]) -> frozenset[str]:
    """Every project module that importing `roots` runs."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name)
        if path is None:
            raise ValueError(f"{name!r} is not a module of this project")
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it run first
        todo += sorted(_imported(path, name) - seen)
    return frozenset(seen)


def data_files(path: Path) -> list[Path]:
    """The package data one module declares it reads: its module-level `DATA_FILES` tuple of names
    (relative to the module's folder), read from the source without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "DATA_FILES" for t in targets) and node.value is not None:
            return [path.parent / name for name in ast.literal_eval(node.value)]
    return []


def code_deps(stage: str) -> list[str]:
    """The files dvc.yaml lists for a stage's code (its modules and the package data they declare),
    relative to the repository root."""
    files = set()
    for m in closure(STAGE_MODULES[stage]):
        path = module_path(m)
        files.add(path)
        files.update(data_files(path))
    return sorted(str(f.relative_to(ROOT)) for f in files)


def params_keys(stage: str, item: str | None = None) -> list[str]:
    """The params keys a stage declares (its modules' PARAMS), which the CLI holds it to."""
    import importlib

    if stage == "ablate" and item is not None and not item.startswith("$"):
        from pipeline.stages.train import variant_keys

        return list(variant_keys(item))
    keys: list[str] = []
    for mod in STAGE_MODULES[stage]:
        module = importlib.import_module(mod)
        if stage in STAGE_PARAMS:
            declared = getattr(module, STAGE_PARAMS[stage])
        else:
            declared = module.PARAMS if hasattr(module, "PARAMS") else module.params_for(item)  # extract@ENCODER
        keys += [k for k in declared if k not in keys]
    # a key inside a listed section is already covered by it (tune_ablation: tune + evaluate's tune.device)
    return [k for k in keys if not any(k.startswith(other + ".") for other in keys)]


def _with_generated_stages(text: str) -> str:
    """dvc.yaml's text with the GENERATED stages in their generated form (a missing ingest-source goes
    right before ingest)."""
    import re

    lines = text.split("\n")
    for name, block in GENERATED.items():
        starts = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^  ([A-Za-z_-]+):\s*$", line))}
        if name in starts:
            i = end = starts[name]
            end += 1
            while end < len(lines) and not re.match(r"^ {0,2}\S", lines[end]):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():  # keep the blank lines between stages
                end -= 1
            lines[i:end] = block.split("\n")
        elif name == "ingest-source" and "ingest" in starts:
            lines[starts["ingest"]:starts["ingest"]] = block.split("\n") + [""]
        else:
            raise ValueError(f"dvc.yaml has no stage {name!r} to rewrite")
    return "\n".join(lines)


def rewrite_dvc_yaml(path: Path = ROOT / "dvc.yaml") -> str:
    """dvc.yaml with the GENERATED stages written whole, and every stage's code deps and params replaced by
    the derived ones (data deps, comments and everything else kept as they are)."""
    import re

    lines = _with_generated_stages(path.read_text(encoding="utf-8")).split("\n")
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([A-Za-z_-]+):\s*$", line)
        if m:
            stage = m.group(1)
        block = re.match(r"^(\s+)(deps|params):\s*(#.*)?$", line)
        if stage in STAGE_MODULES and block:
            indent, kind = block.group(1), block.group(2)
            out.append(line)
            i += 1
            items = []
            while i < len(lines) and re.match(rf"^{indent}  - ", lines[i]):
                items.append(lines[i])
                i += 1
            if kind == "deps":
                out += [x for x in items if not re.match(r"^\s+- (esva|pipeline)/", x)]
                out += [f"{indent}  - {f}" for f in code_deps(stage)]
            else:
                keys = list(params_keys(stage, "${key}")) if stage == "extract" else params_keys(stage)
                keys = [ITEM_PARAMS.get(stage, {}).get(k, k) for k in keys]
                out += [f"{indent}  - {k}" for k in keys]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a developer's tool
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        (ROOT / "dvc.yaml").write_text(rewrite_dvc_yaml(), encoding="utf-8")
        print("dvc.yaml: code deps and params rewritten from the code")
        return
    for stage in STAGE_MODULES:
        print(f"{stage}:")
        for f in code_deps(stage):
            print(f"  - {f}")
        print("  params:", params_keys(stage, "${key}"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
