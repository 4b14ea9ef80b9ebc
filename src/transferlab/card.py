"""Hand a stored run on: export its model with a model card (README.md).

    export_run(Store("runs/transferlab.db"), "3f2a", Path("my-model"))

The card names the base model and its licence (when known), the recipe (the run's spec),
the data, the seed, the dev/test metrics and, when the run belongs to a study, the mean ±
sample std of its cell (the finished runs of the same recipe in that study, one per seed),
and the provenance (versions, commit, hardware).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import yaml

from transferlab.data.build import input_columns
from transferlab.models.artifacts import load_run_model
from transferlab.models.backbone import TINY_ALIASES
from transferlab.models.export import check_out_dir, export_layout, export_model, load_line
from transferlab.store import RunRow, Store

KNOWN_BASES = {"minilm": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")}


def _front_matter_licence(readme: Path) -> str | None:
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    m = re.match(r"---\n(.*?)\n---", text, re.S)
    if not m:
        return None
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return None
    return str(meta["license"]) if isinstance(meta, dict) and meta.get("license") else None


def base_model(name: str) -> tuple[str, str | None]:
    """(what the base model is, its licence or None) from the card of a local folder or the hub cache."""
    if name in KNOWN_BASES:
        return KNOWN_BASES[name]
    if name in TINY_ALIASES:
        return f"{name} (a tiny random test configuration built by transferlab)", None
    folder = Path(name).expanduser()
    if folder.is_dir():
        return name, _front_matter_licence(folder / "README.md")
    try:  # the hub's card, only if it is already cached (no network)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "README.md")
    except Exception:  # noqa: BLE001 - a malformed repo id or cache: the licence is simply unknown
        cached = None
    return name, _front_matter_licence(Path(cached)) if isinstance(cached, str) else None


def study_cell(store: Store, row: RunRow) -> list[RunRow]:
    """The finished runs of ``row``'s recipe in its study (same run id up to the seed), one per seed."""
    if not row.study:
        return []
    recipe = row.run_id.rsplit("-s", 1)[0]
    return [r for r in store.runs(study=row.study, latest=True)
            if r.status == "finished" and r.run_id.rsplit("-s", 1)[0] == recipe]


def _metrics_table(row: RunRow, cell: list[RunRow]) -> list[str]:
    lines = ["| split | metric | this run |" + (f" study cell (mean ± std, n={len(cell)}) |" if cell else ""),
             "|---|---|---|" + ("---|" if cell else "")]
    for split in ("dev", "test"):
        for name, value in (row.summary.get(split) or {}).items():
            line = f"| {split} | {name} | {value:.4f} |"
            if cell:
                values = [r.summary.get(split, {}).get(name) for r in cell]
                values = [v for v in values if v is not None]
                if len(values) >= 2:
                    line += f" {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} |"
                else:
                    line += " (one run) |" if values else " - |"
            lines.append(line)
    return lines if len(lines) > 2 else ["No metrics were stored for this run."]


def model_card(store: Store, row: RunRow, layout: str, label_names: list[str] | None) -> str:
    spec = row.spec
    base, licence = base_model(spec.get("model", {}).get("name", "?"))
    task = spec.get("task", {})
    cell = study_cell(store, row)
    prov = row.provenance or {}
    hw = prov.get("hardware") or {}
    load = load_line(layout)
    tag = {"hf-token": "token-classification", "hf-span": "question-answering"}.get(layout, "text-classification")
    front = ["---", "library_name: transformers", f"pipeline_tag: {tag}", "tags: [transferlab]"]
    if licence:
        front.append(f"license: {licence}")
    recipe = {k: v for k, v in spec.items() if k not in ("seed", "name")}
    lines = [
        *front, "---", "",
        f"# {row.name or row.run_id}", "",
        f"Fine-tuned with transferlab (run `{row.uid}`, run id `{row.run_id}`"
        + (f", study `{row.study}`" if row.study else "") + ").", "",
        "## Base model", "",
        f"- Model: {base}",
        f"- Licence: {licence or 'unknown: check the base model card before redistributing'}",
        f"- Head: {spec.get('head', {}).get('name')} {spec.get('head', {}).get('options') or ''}".rstrip(),
        f"- Load: `{load}`", "",
        "## Data", "",
        f"- Task: {task.get('name')}" + (f" from `{task['path']}`" if task.get("path") else ""),
        f"- Labels: {', '.join(map(str, label_names))}" if label_names else "- Regression (one output)",
        "",
        "## Seeds", "",
        f"- This run: seed {row.seed}",
        *([f"- Study cell: seeds {', '.join(str(r.seed) for r in cell)}"] if cell else []),
        "",
        "## Metrics", "",
        *_metrics_table(row, cell), "",
        "## Recipe", "",
        "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "",
        "## Provenance", "",
        *[f"- {k}: {prov[k]}" for k in ("transferlab", "torch", "transformers", "python", "git_commit") if k in prov],
        *([f"- hardware: {hw.get('gpu') or hw.get('cpu')}"] if hw else []),
        f"- steps: {row.summary.get('steps')}, duration: {row.duration_s or 0:.0f}s", "",
    ]
    return "\n".join(lines)


def export_run(store: Store, ref: str, out_dir: Path, *, force: bool = False) -> Path:
    """Export the stored run ``ref`` to ``out_dir`` with its model card."""
    row = store.get(ref)
    check_out_dir(Path(out_dir), force)  # before the model is loaded: a mistake costs nothing
    model, task = load_run_model(store, ref)
    layout = export_layout(model)
    card = model_card(store, row, layout, task.label_names if task.problem != "regression" else None)
    task_spec = dict(row.spec.get("task") or {})
    options = task_spec.get("options") or {}
    decode = {"doc_stride": options.get("doc_stride"), "max_answer_length": options.get("max_answer_length", 30),
              "n_best": options.get("n_best", 20)} if task.kind == "span" else None
    return export_model(model, task, out_dir, force=force, card=card, columns=input_columns(task_spec),
                        decode=decode)
