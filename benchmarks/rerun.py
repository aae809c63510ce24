"""Benchmark: incremental reruns (issue 16, item 5). After a full `dvc repro` of the demo, `dvc exp run -S
msfe.scales=4` must take at most 30% of the full repro's time and rerun no decode, crop or extract stage
(nor synth or ingest).

The repository's working tree (the files `git ls-files` lists that exist, plus untracked files git does not
ignore) is copied into a scratch workspace, which gets its own `git init` and commit (and `dvc init` when
`.dvc/` is not among the files). Its `dvc.lock` is removed, so the first `dvc repro` runs every stage from
synth on. Then, each timed as a whole:

1. `dvc repro` (full); dvc.lock and metrics/ are then committed, as the project commits them;
2. `dvc exp run -S msfe.scales=4` (the experiment; `--exp KEY=VALUE` for another);
3. `dvc repro` again (nothing to do: DVC's own checks of every stage).

Each command's output is read line by line as it comes, with a timestamp per line. A stage's seconds run
from DVC's `Running stage 'X'` line to the last `Updating lock file` line before the next stage's line:
its command plus DVC's hashing and caching of its outputs. The rest of a command's time (startup, each
stage's change check, the experiment's git bookkeeping) is reported as `dvc_outside_stages_s`. Which stages
ran comes from those lines (`Stage 'X' didn't change, skipping` names the skipped ones); why each reran
comes from dvc.lock before and after the experiment (the deps whose hashes and the params whose values
differ), and whether its outputs changed from the same comparison (for a directory output, which files in
it, from the two file lists in DVC's cache). Also recorded per command: the CPU seconds of all its processes
(children's rusage) and the 1-minute load average before and after, since other work on the machine
stretches wall-clock times. The `analysis` key lists, as facts, where the experiment's seconds went and why
each of those stages reran.

The corpus is the synthetic one the demo generates (`esva synth`). By default the workspace's params.yaml
is the committed one (the demo as committed); `--n-clips N` shrinks synth.n_clips to N and each
synth.conditions count in proportion (at least 2; `--condition-clips K` sets them all to K), `--set
KEY=VALUE` changes any other key, and `--preset tiny` is the test suite's smoke size; `--drop-stage STAGE`
removes a stage from the workspace's dvc.yaml. Every change is listed in the JSON (`params_changed`,
`stages_dropped`). A shrunk corpus shrinks the media stages (synth, decode, crop,
extract) more than the trainings (mechanism does not depend on the corpus at all), so its ratio is not the
committed demo's. Writes metrics/bench_rerun.json.

    python -m benchmarks.rerun                                  # the demo as committed (an hour or more on 2 cores)
    python -m benchmarks.rerun --n-clips 60                     # 60 clips, 3 per condition
    python -m benchmarks.rerun --preset tiny --work /tmp/rerun --keep
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.report import command, environment, write_result

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 0.30
EXPERIMENT = "msfe.scales=4"
MEDIA = re.compile(r"^(synth|ingest-source|ingest|decode|crop|extract)(@.*)?$")  # stages that read or make media
TARGET = (f"`dvc exp run -S {EXPERIMENT}` after a full `dvc repro` takes at most {RATIO_TARGET:.0%} of the full "
          "repro's time and reruns no synth, ingest, decode, crop or extract stage")

RUN_LINE = re.compile(r"^Running stage '([^']+)'")
SKIP_LINE = re.compile(r"^Stage '([^']+)' didn't change")
CACHED_LINE = re.compile(r"^Stage '([^']+)' is cached")
LOCK_LINE = re.compile(r"^(Updating|Generating) lock file")
EXP_NAME = re.compile(r"^Ran experiment\(s\): (.+)$")

# the test suite's smoke size (tests/pipeline/test_dvc.py's, with every stage kept): minutes on 2 cores
TINY = {
    "synth.n_clips": 18, "synth.workers": 1, "synth.min_seconds": 1.0, "synth.max_seconds": 1.4, "synth.width": 160,
    "synth.height": 128, "synth.split": {"train": 0.34, "val": 0.33, "test": 0.33},
    "synth.conditions": {"drift": 2, "jump": 2, "noise": 2, "occlusion": 2, "missing": 2},
    "adaptive.seeds": 1, "ablate.seeds": 1,
    "train.epochs": 2, "train.patience": 1, "train.batch_size": 4,
    "align.warmup_epochs": 1, "align.max_shift": 4, "align.window": 4, "align.hop": 2, "align.neural_steps": 5,
    "llm.vocab_size": 320, "llm.hidden_size": 32, "llm.layers": 1, "llm.heads": 2, "llm.intermediate_size": 64,
    "llm.epochs": 1, "llm.block": 32,
    "tune.epochs": 1, "tune.lora_r": 4, "tune.audio_tokens": 2, "tune.video_tokens": 2, "tune.max_new_tokens": 16,
    "mechanism.seeds": 1, "mechanism.train_per_class": 4, "mechanism.val_per_class": 2, "mechanism.test_per_class": 2,
    "mechanism.epochs": 1, "mechanism.warmup_epochs": 1, "mechanism.msfe_seconds": 1.0, "mechanism.align_seconds": 2.0,
    "mechanism.align_events": 2,
}


# ----------------------------------------------------------------------------- the workspace

def git_files(repo: Path) -> tuple[list[str], list[str]]:
    """The working tree as git sees it: tracked files that exist, and untracked files it does not ignore."""
    def ls(*args: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", *args], check=True, capture_output=True).stdout
        return [p for p in out.decode().split("\0") if p]

    tracked = [p for p in ls() if (repo / p).is_file() or (repo / p).is_symlink()]
    return tracked, ls("--others", "--exclude-standard")


def copy_workspace(repo: Path, dest: Path) -> dict:
    tracked, untracked = git_files(repo)
    for rel in tracked + untracked:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target, follow_symlinks=False)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
    return {"repo": str(repo), "head": head or None, "tracked_files": len(tracked), "untracked_files": untracked,
            "uncommitted": [ln[3:] for ln in dirty.splitlines() if ln and not ln.startswith("??")]}


def parse_set(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _get(tree: dict, key: str):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SystemExit(f"params key {key!r} is not in params.yaml")
        node = node[part]
    return node


def _put(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def params_changes(params: dict, n_clips: int | None, condition_clips: int | None, preset: str | None,
                   sets: list[str]) -> dict[str, object]:
    """The keys to change in the workspace's params.yaml, in order: the preset, the corpus size, then --set."""
    want: dict[str, object] = dict(TINY) if preset == "tiny" else {}
    synth = params["synth"]
    base_n = synth["n_clips"]
    base_cond = dict(want.get("synth.conditions", synth.get("conditions") or {}))
    if n_clips is not None:
        want["synth.n_clips"] = n_clips
        if condition_clips is None:
            want["synth.conditions"] = {k: max(2, round(v * n_clips / base_n)) for k, v in base_cond.items()}
    if condition_clips is not None:
        want["synth.conditions"] = {k: condition_clips for k in base_cond}
    for item in sets:
        key, value = parse_set(item)
        want[key] = value
    return want


def apply_changes(params: dict, want: dict[str, object]) -> list[dict]:
    changed = []
    for key, value in want.items():
        old = _get(params, key)
        if old != value:
            _put(params, key, value)
            changed.append({"key": key, "committed": old, "used": value})
    return changed


def drop_stages(work: Path, names: list[str]) -> list[str]:
    """Remove stages from the workspace's dvc.yaml, and from the other stages' deps the files they made."""
    path = work / "dvc.yaml"
    with path.open(encoding="utf-8") as fh:
        dag = yaml.safe_load(fh)
    stages, made = dag["stages"], []
    for name in names:
        if name not in stages:
            raise SystemExit(f"--drop-stage {name!r}: no such stage in dvc.yaml (stages: {', '.join(stages)})")
        body = stages.pop(name)
        body = body.get("do", body)
        for out in (body.get("outs") or []) + (body.get("metrics") or []) + (body.get("plots") or []):
            out = out if isinstance(out, str) else next(iter(out))
            made.append(re.compile("[^/]+".join(re.escape(part) for part in re.split(r"\$\{[^}]*\}", out))))
    removed = []
    for name, st in stages.items():
        body = st.get("do", st)
        keep = [d for d in body.get("deps") or [] if not any(p.fullmatch(d) for p in made)]
        removed += [f"{name}: {d}" for d in body.get("deps") or [] if d not in keep]
        body["deps"] = keep
    path.write_text(yaml.safe_dump(dag, sort_keys=False), encoding="utf-8")
    return removed


# ----------------------------------------------------------------------------- running and reading DVC

def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (all cores, all processes; /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / hz  # user .. steal, less idle and iowait


def run_timed(argv: list[str], cwd: Path, env: dict, log: Path, echo: bool = True) -> dict:
    """Run a command, timestamping each output line as it arrives; the whole output also goes to `log`. Also: the
    CPU seconds of its processes (children's rusage) and of everything else on the machine meanwhile (/proc/stat
    less those), and the 1-minute load average before and after."""
    lines: list[tuple[float, str]] = []
    load0, ru0, busy0 = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh, subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            errors="replace") as proc:
        for line in proc.stdout:
            t = time.perf_counter() - t0
            line = line.rstrip("\n")
            lines.append((t, line))
            fh.write(f"[{t:9.2f}] {line}\n")
            fh.flush()
            if echo:
                print(f"[{t:9.2f}] {line}", flush=True)
        rc = proc.wait()
    seconds = round(time.perf_counter() - t0, 2)
    ru, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    others = None if busy is None or busy0 is None else round(max(busy - busy0 - cpu, 0.0), 2)
    return {"argv": argv, "rc": rc, "seconds": seconds, "cpu_s": round(cpu, 2), "lines": lines,
            "other_processes_cpu_s": others, "machine_cpu_s_available": round(seconds * (os.cpu_count() or 1), 2),
            "loadavg_1min": {"before": round(load0[0], 2), "after": round(os.getloadavg()[0], 2)}}


def read_stages(run: dict) -> dict:
    """Which stages ran (in order, with seconds), which DVC skipped or restored from its run cache."""
    lines, total = run["lines"], run["seconds"]
    marks = [(i, t, m) for i, (t, s) in enumerate(lines)
             for m in [RUN_LINE.match(s) or SKIP_LINE.match(s) or CACHED_LINE.match(s)] if m]
    ran: dict[str, float] = {}
    checks: dict[str, float] = {}
    last = 0.0  # the end of the previous stage (its last lock line, or its skip line)
    for j, (i, t, m) in enumerate(marks):
        if not RUN_LINE.match(lines[i][1]):
            last = t
            continue
        checks[m.group(1)] = round(t - last, 2)
        stop = marks[j + 1][0] if j + 1 < len(marks) else len(lines)
        locks = [lines[k][0] for k in range(i + 1, stop) if LOCK_LINE.match(lines[k][1])]
        end = locks[-1] if locks else (lines[stop][0] if stop < len(lines) else total)
        ran[m.group(1)] = round(end - t, 2)
        last = end
    skipped = [m.group(1) for i, _, m in marks if SKIP_LINE.match(lines[i][1])]
    cached = [m.group(1) for i, _, m in marks if CACHED_LINE.match(lines[i][1])]
    names = [EXP_NAME.match(s).group(1) for _, s in lines if EXP_NAME.match(s)]
    return {"seconds": total, "cpu_s": run.get("cpu_s"), "other_processes_cpu_s": run.get("other_processes_cpu_s"),
            "machine_cpu_s_available": run.get("machine_cpu_s_available"), "loadavg_1min": run.get("loadavg_1min"),
            "stages": ran,
            "skipped": skipped, "restored_from_run_cache": cached,
            "stages_s": round(sum(ran.values()), 2), "dvc_outside_stages_s": round(total - sum(ran.values()), 2),
            "checks_before_stages_s": round(sum(checks.values()), 2), "check_before_stage_s": checks,
            **({"experiment": names[-1]} if names else {})}


def lock_stages(path: Path) -> dict:
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as fh:
        return (yaml.safe_load(fh) or {}).get("stages", {})


def _entries(stage: dict, kind: str) -> dict[str, object]:
    return {e["path"]: e.get("md5") or e.get("hash") for e in stage.get(kind) or []}


def _params(stage: dict) -> dict[str, object]:
    out = {}
    for _, values in (stage.get("params") or {}).items():
        out.update(values or {})
    return out


def dir_manifest(cache: Path, md5: str | None) -> dict[str, str] | None:
    """A directory output's file list (relpath -> md5) from DVC's cache, or None."""
    if not cache or not md5 or not md5.endswith(".dir"):
        return None
    path = cache / "files" / "md5" / md5[:2] / md5[2:]
    try:
        return {e["relpath"]: e["md5"] for e in json.loads(path.read_text(encoding="utf-8"))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def why_rerun(before: dict, after: dict, stages: list[str], cache: Path | None = None) -> dict[str, dict]:
    """For each stage: the params whose values and the deps whose hashes differ between the two dvc.lock files
    (what DVC reran it for), which of its outputs changed and, for a directory output with DVC's cache at hand,
    which files in it (at most 10 named)."""
    out = {}
    for name in stages:
        a, b = before.get(name, {}), after.get(name, {})
        pa, pb = _params(a), _params(b)
        da, db = _entries(a, "deps"), _entries(b, "deps")
        oa, ob = _entries(a, "outs"), _entries(b, "outs")
        changed = sorted(o for o in set(oa) | set(ob) if oa.get(o) != ob.get(o))
        out[name] = {"params": sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k)),
                     "deps": sorted(d for d in set(da) | set(db) if da.get(d) != db.get(d)),
                     "outputs_changed": changed}
        files = {}
        for o in changed:
            ma, mb = dir_manifest(cache, oa.get(o)), dir_manifest(cache, ob.get(o))
            if ma is not None and mb is not None:
                diff = sorted(f for f in set(ma) | set(mb) if ma.get(f) != mb.get(f))
                files[o] = {"changed": diff[:10], "n_changed": len(diff), "n_files": len(mb)}
        if files:
            out[name]["files_changed"] = files
    return out


# ----------------------------------------------------------------------------- the analysis

def family(stage: str) -> str:
    return stage.split("@", 1)[0]


def ablate_variants_without_msfe(params: dict) -> dict[str, str]:
    """The ablation variants whose model has no MSFE (msfe.enabled=false, or no hubert among features.use: MSFE
    runs on HuBERT frames), so msfe.scales cannot change their result; from pipeline.stages.train.VARIANTS."""
    try:
        sys.path.insert(0, str(ROOT))
        from pipeline.stages.train import VARIANTS
    except Exception:  # noqa: BLE001 - the analysis goes on without this part
        return {}
    out = {}
    for name, overrides in VARIANTS.items():
        o = dict(x.split("=", 1) for x in overrides)
        use = yaml.safe_load(o["features.use"]) if "features.use" in o else params["features"]["use"]
        if o.get("msfe.enabled") == "false" or not params["msfe"].get("enabled", True):
            out[name] = "msfe.enabled=false"
        elif "hubert" not in use:
            out[name] = f"features.use={use} (no hubert)"
    return out


def _families(ran: dict[str, float], full: dict[str, float], pct) -> list[dict]:
    fams: dict[str, dict] = {}
    for n, s in ran.items():
        f = fams.setdefault(family(n), {"family": family(n), "stages": 0, "exp_s": 0.0, "full_s": 0.0})
        f["stages"] += 1
        f["exp_s"] += s
        f["full_s"] += full.get(n, 0.0)
    for f in fams.values():
        f["exp_s"], f["full_s"] = round(f["exp_s"], 2), round(f["full_s"], 2)
        f["exp_share_of_full"] = pct(f["exp_s"])
    return sorted(fams.values(), key=lambda f: -f["exp_s"])


def _mean(total: float, n: int) -> float:
    return total / max(n, 1)


def analyse(full: dict, exp: dict, causes: dict[str, dict], params: dict, exp_key: str,
            lock_bytes: int | None = None) -> dict:
    """Why the experiment took what it took, from the per-stage seconds and the two dvc.lock files: facts only."""
    total, ran = full["seconds"], exp["stages"]
    pct = lambda s: round(s / total, 4) if total else 0.0  # noqa: E731
    media_full = sum(s for n, s in full["stages"].items() if MEDIA.match(n))
    rerun_full = sum(full["stages"].get(n, 0.0) for n in ran)
    families = _families(ran, full["stages"], pct)
    top = exp_key.split("=", 1)[0].split(".")[0]  # "msfe"
    direct = sorted(n for n, c in causes.items() if any(k == top or k.startswith(top + ".") for k in c["params"]))
    downstream = sorted(n for n in causes if n not in direct)
    unchanged = sorted(n for n, c in causes.items() if not c["outputs_changed"])
    # stages whose model folders changed only in config files: the same weights, written again
    model_files = {n: sorted({f for o, d in c.get("files_changed", {}).items() if "/models/" in o
                              for f in d["changed"]}) for n, c in causes.items()}
    same = {n: fs for n, fs in model_files.items() if fs and not any(f.endswith(".safetensors") for f in fs)}
    same_s = sum(ran.get(n, 0.0) for n in same)
    # the ablation variants whose model has no MSFE, and the stages that reran only for their outputs
    no_msfe = {} if top != "msfe" else {
        v: r for v, r in ablate_variants_without_msfe(params).items() if f"ablate@{v}" in ran}
    no_msfe_s = sum(ran[f"ablate@{v}"] for v in no_msfe)
    fed = {n: c["deps"] for n, c in causes.items() if n in downstream and no_msfe and c["deps"]
           and all(any(d.endswith(f"/ablation/{v}") for v in no_msfe) for d in c["deps"])}
    fed_s = sum(ran.get(n, 0.0) for n in fed)
    ec, fc = exp["checks_before_stages_s"], full["checks_before_stages_s"]
    facts = [
        f"full repro {total:.0f} s; experiment {exp['seconds']:.0f} s (ratio {exp['seconds'] / total:.3f}, "
        f"target <= {RATIO_TARGET:.2f})",
        f"media stages (synth, ingest, decode, crop, extract) took {media_full:.0f} s of the full repro "
        f"({pct(media_full):.1%}): the most any {top}.* change can skip",
        f"the {len(ran)} stages the experiment reran took {rerun_full:.0f} s in the full repro ({pct(rerun_full):.1%} "
        "of it): the ratio cannot go below this while the same stages rerun at the same cost",
        "by stage family (experiment seconds, share of the full repro): " + "; ".join(
            f"{f['family']} x{f['stages']} {f['exp_s']:.0f} s ({f['exp_share_of_full']:.1%})" for f in families),
        f"DVC outside the stages: {exp['dvc_outside_stages_s']:.0f} s in the experiment, "
        f"{full['dvc_outside_stages_s']:.0f} s in the full repro; of it, between the previous stage's lock-file update "
        f"and each stage DVC ran (rewriting dvc.lock, in the experiment also staging the stage's files in git, then "
        f"the change check): {ec:.0f} s over {len(ran)} stages in the experiment (mean {_mean(ec, len(ran)):.1f} s), "
        f"{fc:.0f} s over {len(full['stages'])} in the full repro (mean {_mean(fc, len(full['stages'])):.1f} s, "
        "growing with dvc.lock)" + (f"; dvc.lock is {lock_bytes / 1e3:.0f} kB after the experiment"
                                    if lock_bytes else ""),
    ]
    if full.get("cpu_s") and exp.get("cpu_s") is not None:
        fl, el = full["loadavg_1min"], exp["loadavg_1min"]
        facts.append(f"CPU seconds of all the command's processes: full {full['cpu_s']:.0f}, experiment "
                     f"{exp['cpu_s']:.0f} (ratio {exp['cpu_s'] / full['cpu_s']:.3f}); 1-min load average before -> "
                     f"after: full {fl['before']} -> {fl['after']}, experiment {el['before']} -> {el['after']} on "
                     f"{os.cpu_count()} cores")
        if full.get("other_processes_cpu_s") is not None and exp.get("other_processes_cpu_s") is not None:
            facts.append(f"other processes on the machine used {full['other_processes_cpu_s']:.0f} of the "
                         f"{full['machine_cpu_s_available']:.0f} CPU seconds available during the full repro, "
                         f"{exp['other_processes_cpu_s']:.0f} of {exp['machine_cpu_s_available']:.0f} during the "
                         "experiment")
    facts.append(f"{len(direct)} stages reran because a {top}.* value they declare changed: "
                 f"{', '.join(direct) or 'none'}; {len(downstream)} because a dependency's hash changed: "
                 f"{', '.join(downstream) or 'none'}")
    if no_msfe:
        facts.append(f"{len(no_msfe)} of the rerun ablate variants have no MSFE in their model ({', '.join(no_msfe)}) "
                     f"but declare the whole '{top}' params section: {no_msfe_s:.0f} s ({pct(no_msfe_s):.1%} of the "
                     "full repro)")
    if same:
        facts.append(f"{len(same)} rerun stages wrote byte-identical weights (*.safetensors); only "
                     f"{sorted({f for fs in same.values() for f in fs})} changed in their model folders: "
                     f"{', '.join(same)}: {same_s:.0f} s ({pct(same_s):.1%} of the full repro)")
    if fed:
        facts.append(f"{', '.join(fed)} reran only because those variants' outputs changed: {fed_s:.0f} s "
                     f"({pct(fed_s):.1%} of the full repro)")
    if unchanged:
        facts.append(f"reran with every output unchanged: {', '.join(unchanged)}")
    return {"facts": facts, "media_full_s": round(media_full, 2), "media_share_of_full": pct(media_full),
            "rerun_stages_full_s": round(rerun_full, 2), "rerun_stages_share_of_full": pct(rerun_full),
            "families": families, "rerun_for_params": direct, "rerun_for_deps": downstream,
            "ablate_variants_without_msfe": {"variants": no_msfe, "exp_s": round(no_msfe_s, 2),
                                             "share_of_full": pct(no_msfe_s)},
            "rerun_only_for_those_variants": {"stages": fed, "exp_s": round(fed_s, 2), "share_of_full": pct(fed_s)},
            "rerun_with_outputs_unchanged": unchanged,
            "rerun_with_weights_unchanged": {"stages": same, "exp_s": round(same_s, 2), "share_of_full": pct(same_s)}}


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="the repository whose working tree is measured")
    ap.add_argument("--n-clips", type=int, default=None, help="synth.n_clips (default: as committed)")
    ap.add_argument("--condition-clips", type=int, default=None,
                    help="every synth.conditions count (default: as committed, or in proportion with --n-clips)")
    ap.add_argument("--preset", choices=["tiny"], default=None, help="tiny: the test suite's smoke size")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml change in the workspace before the full repro (repeatable)")
    ap.add_argument("--drop-stage", dest="drop", action="append", default=[], metavar="STAGE",
                    help="remove a stage (a foreach stage as a whole) from the workspace's dvc.yaml, and its outputs "
                    "from the other stages' deps (repeatable; the tests drop ablate and tune_ablation)")
    ap.add_argument("--exp", default=EXPERIMENT, help=f"the experiment's -S override (default {EXPERIMENT})")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS and MKL_NUM_THREADS for every stage (default: unset, torch's own choice); "
                    "1 keeps a busy machine's other processes from stalling torch's thread pool")
    ap.add_argument("--no-noop", action="store_true", help="skip the third, nothing-to-do `dvc repro`")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (workspace, logs)")
    ap.add_argument("--quiet", action="store_true", help="do not echo DVC's output")
    ap.add_argument("--out", type=Path, default=ROOT / "metrics" / "bench_rerun.json")
    args = ap.parse_args(argv)
    if shutil.which("git") is None:
        raise SystemExit("git is not on PATH: the workspace is copied with `git ls-files` and `dvc exp run` needs git")
    bindir = Path(sys.executable).parent
    dvc = str(bindir / "dvc") if (bindir / "dvc").exists() else shutil.which("dvc")
    if dvc is None:
        raise SystemExit("dvc is not installed next to this Python nor on PATH")

    scratch = Path(tempfile.mkdtemp(prefix="esva-rerun-")) if args.work is None else args.work
    if args.work is not None and scratch.exists():
        shutil.rmtree(scratch)
    work, logs = scratch / "repo", scratch / "logs"
    work.mkdir(parents=True)
    logs.mkdir()
    # PYTHONPATH: `esva` imports the workspace's copy of the code (the one DVC hashes), not the editable install's
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(work),
               PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(scratch / "site"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GIT_AUTHOR_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@localhost", GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    env.pop("VIRTUAL_ENV", None)
    if args.threads is not None:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    git = lambda *a: subprocess.run(["git", *a], cwd=work, env=env, check=True, capture_output=True)  # noqa: E731

    source = copy_workspace(args.repo, work)
    setup = ["copied the working tree (tracked files that exist + untracked, not ignored)"]
    if (work / "dvc.lock").exists():
        (work / "dvc.lock").unlink()
        setup.append("removed dvc.lock so that the first `dvc repro` runs every stage")
    with (work / "params.yaml").open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    changed = apply_changes(params, params_changes(params, args.n_clips, args.condition_clips, args.preset, args.sets))
    if changed:
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        setup.append("wrote the params changes into the workspace's params.yaml (its comments dropped)")
    if args.drop:
        removed = drop_stages(work, args.drop)
        setup.append(f"removed stages {args.drop} from the workspace's dvc.yaml (its comments dropped) and "
                     f"{len(removed)} deps on their outputs")
    git("init", "-q")
    if not (work / ".dvc").is_dir():
        subprocess.run([dvc, "init", "-q"], cwd=work, env=env, check=True, capture_output=True)
        setup.append("dvc init (no .dvc/ among the files)")
    git("add", "-A")
    git("commit", "-qm", "workspace")
    setup.append("git init + commit")

    result: dict = {
        "benchmark": "rerun", "command": command("benchmarks.rerun", argv), "target": TARGET,
        "environment": environment("cpu"), "corpus": "synthetic",
        "demo_as_committed": not changed and not args.drop, "stages_dropped": args.drop,
        "corpus_note": ("synthetic corpus, the demo's params as committed" if not changed else
                        "synthetic corpus, params changed as listed in params_changed (not the demo as committed: "
                        "the media stages shrink with the corpus, mechanism does not)"),
        "params_changed": changed, "experiment": f"dvc exp run -S {args.exp}", "source": source, "setup": setup,
        "threads": {k: env.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "timing": ("each command timed as a whole; a stage's seconds: from DVC's \"Running stage\" line to the last "
                   "\"Updating lock file\" line before the next stage's line (its command + DVC caching its outputs)"),
    }
    echo = not args.quiet
    full_run = run_timed([dvc, "repro"], work, env, logs / "repro.log", echo)
    full = read_stages(full_run)
    result["full"] = full
    if full_run["rc"] != 0:
        return _fail(result, "dvc repro", full_run, args, scratch)
    lock_full = lock_stages(work / "dvc.lock")
    git("add", "-A")
    git("commit", "-qm", "dvc repro")

    exp_run = run_timed([dvc, "exp", "run", "-S", args.exp], work, env, logs / "exp.log", echo)
    exp = read_stages(exp_run)
    result["exp"] = exp
    if exp_run["rc"] != 0:
        return _fail(result, "dvc exp run", exp_run, args, scratch)
    lock_exp = lock_stages(work / "dvc.lock")
    if not args.no_noop:
        noop_run = run_timed([dvc, "repro"], work, env, logs / "noop.log", echo)
        noop = read_stages(noop_run)
        result["noop_repro"] = {"seconds": noop["seconds"], "rc": noop_run["rc"], "stages_ran": list(noop["stages"])}

    rerun = list(exp["stages"])
    media = [s for s in rerun + exp["restored_from_run_cache"] if MEDIA.match(s)]
    ratio = exp["seconds"] / full["seconds"] if full["seconds"] else float("inf")
    causes = why_rerun(lock_full, lock_exp, rerun, work / ".dvc" / "cache")
    result.update({
        "full_s": full["seconds"], "exp_s": exp["seconds"], "ratio": round(ratio, 4),
        "cpu_s": {"full": full["cpu_s"], "exp": exp["cpu_s"]},
        "other_processes_cpu_s": {"full": full["other_processes_cpu_s"], "exp": exp["other_processes_cpu_s"]},
        "ratio_cpu": round(exp["cpu_s"] / full["cpu_s"], 4) if full["cpu_s"] else None,
        "stages_full": list(full["stages"]), "stages_rerun": rerun, "media_stages_rerun": media,
        "media_stages_skipped": [s for s in exp["skipped"] if MEDIA.match(s)],
        "stage_s": {"full": full["stages"], "exp": exp["stages"]},
        "rerun_causes": causes,
        "meets_target": {"ratio_ok": ratio <= RATIO_TARGET, "no_media_rerun": not media,
                         "overall": ratio <= RATIO_TARGET and not media},
    })
    try:
        lock = work / "dvc.lock"
        size = lock.stat().st_size if lock.exists() else None
        result["analysis"] = analyse(full, exp, causes, params, args.exp, size)
    except Exception as exc:  # noqa: BLE001 - the measurements stand without it
        result["analysis"] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.keep:
        result["work"] = str(scratch)
    write_result(result, args.out)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _fail(result: dict, what: str, run: dict, args, scratch: Path) -> dict:
    result["error"] = {"step": what, "rc": run["rc"], "tail": [s for _, s in run["lines"][-40:]]}
    result["meets_target"] = {"ratio_ok": False, "no_media_rerun": False, "overall": False}
    result["work"] = str(scratch)  # kept for a look at what failed
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(0 if "error" not in res else 1)
