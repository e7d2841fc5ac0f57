"""The trail from data to answer: which dataset version fed which run, which run made which export.

Reads only what each job wrote into its own folder:
  datasets/<v>/manifest.json  -> parent ({"source": ...} or {"version": ...})
  runs/<r>/config.yaml        -> base_model, dataset   ; runs/<r>/status.json -> state
  exports/<e>/export.json     -> source: {run, checkpoint, dataset, base_model}, files
"""
from __future__ import annotations

from pathlib import Path

from core import jobs, runs, versions
from core.paths import exports_dir, listed, models_dir, read_json


def list_runs() -> list[dict]:
    return [{**r, "path": str(r["path"])} for r in runs.list_runs()]


def list_exports() -> list[dict]:
    out = []
    for folder in listed(exports_dir()):
        info = read_json(folder / "export.json", default={}) or {}
        src = info.get("source", {})
        out.append({"export": folder.name, "path": str(folder), "run": src.get("run"),
                    "checkpoint": src.get("checkpoint"), "dataset": src.get("dataset"),
                    "base_model": src.get("base_model"),
                    "files": [Path(f).name for f in info.get("files", [])] or sorted(p.name for p in folder.glob("*.gguf")),
                    "state": jobs.read_status(folder).get("state", info.get("state", "unknown")),
                    "complete": bool(info)})  # export.json is written last: only finished exports have one
    return out


def list_local_models() -> list[str]:
    return [p.name for p in listed(models_dir()) if (p / "config.json").exists()]


def summary() -> dict:
    return {"datasets": versions.list_versions(), "runs": list_runs(), "exports": list_exports(),
            "models": list_local_models()}


def parents(manifest: dict) -> list[tuple[str, str]]:
    """(kind, name) of what a dataset version was made from: ("dataset", v), ("source", label), ("hub", id),
    ("file", path) or ("generated", name), in the order the manifest lists them."""
    parent = manifest.get("parent") or {}
    out = [("dataset", parent["version"])] if parent.get("version") else []
    out += [("dataset", v) for v in parent.get("versions") or []]
    out += [("source", parent["source"])] if parent.get("source") else []
    out += [("hub", h) for h in parent.get("hub") or []] + [("file", f) for f in parent.get("files") or []]
    return out + [("generated", g.get("source", "generated")) for g in parent.get("generated") or []]


def graph_edges(s: dict | None = None) -> list[tuple[str, str]]:
    """(from, to) edges with typed node names: 'source:x' → 'dataset:v' → 'run:r' → 'export:e'."""
    s = s or summary()
    edges = []
    for m in s["datasets"]:  # every parent the tables name, so an Augment mixture of a file and generated rows
        # is drawn too (only versions and sources were, and Home said "Nothing yet" beside a listed version)
        edges += [(f"{kind}:{Path(name).name if kind == 'file' else name}", f"dataset:{m['name']}")
                  for kind, name in parents(m)]
    for r in s["runs"]:
        if r["base_model"]:
            edges.append((f"model:{r['base_model']}", f"run:{r['run']}"))
        if r["dataset"]:
            edges.append((f"dataset:{r['dataset']}", f"run:{r['run']}"))
        if r.get("parent_run"):  # a DPO run that continued an SFT run's adapter
            edges.append((f"run:{r['parent_run']}", f"run:{r['run']}"))
    for e in s["exports"]:
        if e["run"]:
            edges.append((f"run:{e['run']}", f"export:{e['export']}"))
        elif e["base_model"]:
            edges.append((f"model:{e['base_model']}", f"export:{e['export']}"))
    return edges
