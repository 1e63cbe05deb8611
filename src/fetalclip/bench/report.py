"""Benchmark outputs: ``results.json``, ``results.csv``, ``results.md`` and a self-contained ``report.html``.

- ``results.json``: the machine record. Every metric with its CI, per model and task, every skip with its
  reason, and the provenance that makes a number checkable (weights sha256, data manifest sha256, git commit,
  seed, package version). Figure data (images, 2-D maps) stays out of it: it is large and lives in the store.
- ``results.csv``: one row per (model, task, metric), for spreadsheets and plotting scripts.
- ``results.md``: the table in the published layout (models x tasks, the primary metric with its 95% CI),
  the best of *our* rows per column in bold, and the published FetalCLIP / CLIP ViT-L/14 numbers as reference
  rows, marked as published and never bolded: they were measured on other data splits.
- ``report.html``: one file with everything inlined (CSS, base64 PNG figures), so it can be mailed or
  attached to a paper's supplement and still open anywhere. A few lines of script only check that every
  figure decoded and flag any that did not.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..io import write_json_atomic, write_text_atomic
from .harness import BenchmarkRun
from .tasks import PUBLISHED_CLIP, PUBLISHED_FETALCLIP, TaskSpec

PUBLISHED_SOURCE = "Maani et al. 2025 (arXiv 2502.14807), their full datasets and splits"
PUBLISHED_ROWS = (PUBLISHED_FETALCLIP, PUBLISHED_CLIP)
MISSING = "—"


# -- shared helpers --------------------------------------------------------------------------------------------
def _entry_index(run: BenchmarkRun) -> dict[tuple[str, str], dict[str, Any]]:
    return {(entry["model"], entry["task"]): entry for entry in run.entries}


def table_specs(run: BenchmarkRun) -> list[TaskSpec]:
    """Table columns: requested tasks with a primary metric whose data was given (registry order)."""
    no_data = {item["task"] for item in run.skipped if item.get("model") is None}
    return [spec for spec in run.registry if spec.name in run.tasks and spec.primary and spec.name not in no_data]


def primary_metric(entry: Mapping[str, Any] | None, spec: TaskSpec) -> Mapping[str, Any] | None:
    """The task's primary metric of a finished cell, or ``None`` (failed, missing, or not a finite number)."""
    if not entry or entry.get("status") != "done":
        return None
    value = (entry.get("metrics") or {}).get(spec.primary)
    if not value or value.get("value") is None or not math.isfinite(value["value"]):
        return None
    return value


def best_rows(run: BenchmarkRun, spec: TaskSpec) -> set[str]:
    """Labels of our models holding the best primary value of a column (ties share it)."""
    index = _entry_index(run)
    values = {ref.label: primary_metric(index.get((ref.label, spec.name)), spec) for ref in run.models}
    scores = {label: round(value["value"], 2) for label, value in values.items() if value is not None}
    if not scores:
        return set()
    best = max(scores.values()) if spec.higher_is_better else min(scores.values())
    return {label for label, score in scores.items() if score == best}


def _cell_text(value: Mapping[str, Any] | None, entry: Mapping[str, Any] | None) -> tuple[str, str]:
    """(main number, CI text) of a cell; a missing value says why in one word."""
    if value is None:
        if entry is not None and entry.get("status") == "failed":
            return "failed", ""
        return MISSING, ""
    ci = value.get("ci")
    return f"{value['value']:.2f}", (f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _column_header(spec: TaskSpec) -> str:
    arrow = "" if spec.higher_is_better else " ↓"
    return f"{spec.title} ({spec.unit}){arrow}"


# -- results.json / results.csv ------------------------------------------------------------------------------
def results_document(run: BenchmarkRun) -> dict[str, Any]:
    tasks = {
        spec.name: {
            "title": spec.title,
            "data": spec.data_key,
            "primary": spec.primary,
            "higher_is_better": spec.higher_is_better,
            "unit": spec.unit,
            "version": spec.version,
            "description": spec.description,
            "published": dict(spec.published),
        }
        for spec in run.registry
        if spec.name in run.tasks
    }
    results = [
        {**{key: entry.get(key) for key in ("model", "task", "status", "error", "metrics", "details", "elapsed_s", "finished_utc", "provenance")},
         "options": (entry.get("fingerprint") or {}).get("options")}
        for entry in run.entries
    ]
    return {
        "format": "fetalclip-benchmark",
        "format_version": 1,
        "models": [{"label": ref.label, "spec": ref.spec, "sha256": run.provenance["models"][ref.label]["sha256"]} for ref in run.models],
        "tasks": tasks,
        "results": results,
        "skipped": run.skipped,
        "published_source": PUBLISHED_SOURCE,
        "provenance": run.provenance,
    }


def csv_rows(run: BenchmarkRun) -> Iterable[list[Any]]:
    yield ["model", "task", "metric", "value", "ci_low", "ci_high", "unit", "n", "status", "model_sha256", "data_manifest_sha256", "seed"]
    for entry in run.entries:
        provenance = entry.get("provenance") or {}
        base = [provenance.get("model_sha256"), provenance.get("data_manifest_sha256"), provenance.get("seed")]
        metrics = entry.get("metrics") or {}
        if not metrics:
            yield [entry["model"], entry["task"], "", "", "", "", "", "", entry["status"], *base]
        for name, value in metrics.items():
            ci = value.get("ci") or [None, None]
            yield [entry["model"], entry["task"], name, value.get("value"), ci[0], ci[1], value.get("unit"), value.get("n"), entry["status"], *base]


def _csv_text(rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in row])
    return buffer.getvalue()


# -- results.md -----------------------------------------------------------------------------------------------
def markdown_table(run: BenchmarkRun) -> str:
    specs = table_specs(run)
    index = _entry_index(run)
    lines = ["| model | " + " | ".join(_column_header(spec) for spec in specs) + " |", "|---|" + "---:|" * len(specs)]
    best = {spec.name: best_rows(run, spec) for spec in specs}
    for ref in run.models:
        cells = []
        for spec in specs:
            entry = index.get((ref.label, spec.name))
            number, ci = _cell_text(primary_metric(entry, spec), entry)
            if ref.label in best[spec.name] and number not in (MISSING, "failed"):
                number = f"**{number}**"
            cells.append(f"{number} {ci}".strip())
        lines.append(f"| {_md_text(ref.label)} | " + " | ".join(cells) + " |")
    for row in PUBLISHED_ROWS:
        cells = [f"{spec.published[row]:.2f}" if row in spec.published else MISSING for spec in specs]
        lines.append(f"| {row} *(published)* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_metrics(run: BenchmarkRun) -> list[str]:
    """Per task, every metric of every model (the table shows only the primary one): one small table each."""
    index = _entry_index(run)
    lines: list[str] = []
    for spec in table_specs(run):
        entries = [(ref.label, index.get((ref.label, spec.name))) for ref in run.models]
        entries = [(label, entry) for label, entry in entries if entry and entry.get("status") == "done" and entry.get("metrics")]
        if not entries:
            continue
        names: list[str] = []
        for _, entry in entries:
            names += [name for name in entry["metrics"] if name not in names]
        units = {name: next(e["metrics"][name].get("unit") for _, e in entries if name in e["metrics"]) for name in names}
        lines += ["", f"### {spec.title} (`{spec.name}`)", "",
                  "| model | " + " | ".join(f"{name} ({units[name]})" if units[name] else name for name in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for label, entry in entries:
            cells = []
            for name in names:
                value = entry["metrics"].get(name)
                number, ci = _cell_text(value if value and value.get("value") is not None else None, entry)
                cells.append(f"{number} {ci}".strip())
            lines.append(f"| {_md_text(label)} | " + " | ".join(cells) + " |")
    return lines


def markdown_report(run: BenchmarkRun) -> str:
    provenance = run.provenance
    parts = [
        "# FetalCLIP benchmark",
        "",
        markdown_table(run),
        "",
        "Values with 95% CI in brackets; **bold**: best of the benchmarked models per column (↓: lower is better). "
        f"Rows marked *(published)* are reference numbers from {PUBLISHED_SOURCE}, not recomputed here.",
        "",
        "## Models",
        "",
    ]
    details = markdown_metrics(run)
    if details:
        parts = parts[:-2] + ["## All metrics", *details, "", "## Models", ""]
    parts += [f"- {_md_code(ref.label)}: {_md_code(ref.spec)} "
              f"(weights sha256 `{provenance['models'][ref.label]['sha256'][:16]}…`)" for ref in run.models]
    parts += ["", "## Data", ""]
    parts += [f"- {_md_code(key)}: {_md_code(info['spec'])}, {info['n']} images (manifest sha256 `{info['manifest_sha256'][:16]}…`)"
              for key, info in sorted(provenance.get("data", {}).items())]
    if run.skipped:
        parts += ["", "## Skipped", ""]
        parts += [f"- {item['task']}" + (f" / {item['model']}" if item.get("model") else "") + f": {item['reason']}" for item in run.skipped]
    parts += ["", f"fetalclip {provenance.get('fetalclip_version')}, commit `{provenance.get('git_commit')}`, "
                  f"seed {provenance.get('seed')}, bootstrap {provenance.get('n_bootstrap')} resamples, {provenance.get('created_utc')}.", ""]
    return "\n".join(parts)


# -- report.html ----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table.results{border-collapse:collapse;font-size:.85rem;margin:1rem 0}
table.results th,table.results td{border:1px solid #ccc;padding:.3rem .5rem;text-align:right}
table.results th:first-child,table.results td:first-child{text-align:left}
table.results tr.published td{background:#f6f6f6;color:#555;font-style:italic}
td.best{font-weight:700;background:#e8f4e8}.ci{display:block;font-size:.72rem;color:#666}
.figures{display:flex;flex-wrap:wrap;gap:1rem}.figure{border:1px solid #e3e3e3;padding:.5rem;background:#fff}
.figure img{display:block;max-width:100%}.figure .caption{font-size:.8rem;color:#444;margin-top:.3rem}
.note{font-size:.8rem;color:#555}code{font-size:.8rem}#image-check{color:#b00;font-weight:600}
"""

# Marks the page when a figure fails to decode, so a broken report is visible to readers and to tests.
_SCRIPT = """
window.addEventListener('load', function () {
  var images = document.querySelectorAll('img');
  var broken = 0;
  images.forEach(function (image) { if (!image.complete || image.naturalWidth === 0) { broken += 1; } });
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-broken-images', String(broken));
  if (broken > 0) {
    document.getElementById('image-check').textContent = broken + ' figure(s) failed to display.';
  }
});
"""


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def _md_text(value: Any) -> str:
    """Text from a user (a label taken from a path) as literal Markdown: specials escaped, on one line."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(value).split()))


def _md_code(value: Any) -> str:
    """A code span that no backtick inside ``value`` can close early (CommonMark: a longer fence)."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if len(fence) > 1 else f"`{text}`"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _figure_card(png: bytes, caption: str) -> str:
    return f'<div class="figure">{_img(png, caption)}<div class="caption">{_esc(caption)}</div></div>'


def html_table(run: BenchmarkRun) -> str:
    specs = table_specs(run)
    index = _entry_index(run)
    best = {spec.name: best_rows(run, spec) for spec in specs}
    rows = ["<tr><th>model</th>" + "".join(f"<th title=\"{_esc(spec.description)}\">{_esc(_column_header(spec))}</th>" for spec in specs) + "</tr>"]
    for ref in run.models:
        cells = []
        for spec in specs:
            entry = index.get((ref.label, spec.name))
            number, ci = _cell_text(primary_metric(entry, spec), entry)
            title = f' title="{_esc(entry.get("error"))}"' if entry and entry.get("error") else ""
            css = ' class="best"' if ref.label in best[spec.name] and number not in (MISSING, "failed") else ""
            cells.append(f"<td{css}{title}>{_esc(number)}" + (f'<span class="ci">{_esc(ci)}</span>' if ci else "") + "</td>")
        rows.append(f"<tr><td>{_esc(ref.label)}</td>{''.join(cells)}</tr>")
    for row in PUBLISHED_ROWS:
        cells = "".join(f"<td>{spec.published[row]:.2f}</td>" if row in spec.published else f"<td>{MISSING}</td>" for spec in specs)
        rows.append(f'<tr class="published"><td>{_esc(row)} (published)</td>{cells}</tr>')
    return '<table class="results">' + "".join(rows) + "</table>"


def _figure_sections(run: BenchmarkRun) -> list[tuple[str, list[str]]]:
    from . import figures

    done = [entry for entry in run.entries if entry.get("status") == "done"]
    titles = {spec.name: spec.title for spec in run.registry}
    sections: dict[str, list[str]] = {}

    def add(section: str, png: bytes, caption: str) -> None:
        sections.setdefault(section, []).append(_figure_card(png, caption))

    for entry in done:
        figs, details = entry.get("figures") or {}, entry.get("details") or {}
        where = f"{entry['model']} · {titles.get(entry['task'], entry['task'])}"
        if "ga_scatter" in figs:
            data = figs["ga_scatter"]
            add("Gestational age against the WHO growth chart", figures.ga_scatter(data["pred_ga_days"], data["true_hc_mm"], where), where)
        if "confusion" in details:
            data = details["confusion"]
            add("Confusion matrices", figures.confusion_matrix(data["labels"], data["matrix"], where), where)
        if "embedding_map" in figs:
            data = figs["embedding_map"]
            add("Image embeddings", figures.embedding_map(data["xy"], data["labels"], data.get("method", ""), entry["model"]), where)
        if figs.get("cams"):
            add("Class-activation maps", figures.cam_grid(figs["cams"], entry["model"]), f"{where} (target: true class)")
    curves: dict[str, dict[str, Any]] = {}
    for entry in done:
        if "fewshot" in (entry.get("details") or {}):
            curves.setdefault(entry["task"], {})[entry["model"]] = entry["details"]["fewshot"]
    for task, by_model in curves.items():
        metric = next(iter(by_model.values())).get("metric", "metric")
        add("Few-shot curves", figures.fewshot_curves(by_model, metric, titles.get(task, task)), titles.get(task, task))
    order = ["Gestational age against the WHO growth chart", "Confusion matrices", "Few-shot curves", "Image embeddings", "Class-activation maps"]
    return [(name, sections[name]) for name in order if name in sections]


def html_report(run: BenchmarkRun) -> str:
    provenance = run.provenance
    model_rows = "".join(
        f"<li><code>{_esc(ref.label)}</code>: <code>{_esc(ref.spec)}</code>, "
        f"weights sha256 <code>{_esc(provenance['models'][ref.label]['sha256'])}</code></li>"
        for ref in run.models
    )
    data_rows = "".join(
        f"<li><code>{_esc(key)}</code>: <code>{_esc(info['spec'])}</code>, {info['n']} images, "
        f"manifest sha256 <code>{_esc(info['manifest_sha256'])}</code></li>"
        for key, info in sorted(provenance.get("data", {}).items())
    )
    skipped = "".join(
        f"<li>{_esc(item['task'])}" + (f" / {_esc(item['model'])}" if item.get("model") else "") + f": {_esc(item['reason'])}</li>"
        for item in run.skipped
    )
    body = [
        "<h1>FetalCLIP benchmark</h1>",
        '<p id="image-check"></p>',
        html_table(run),
        '<p class="note">Values with 95% CI below them; <b>bold</b>: best of the benchmarked models per column (↓: lower is better). '
        f"Grey rows are published reference numbers ({_esc(PUBLISHED_SOURCE)}), not recomputed here.</p>",
    ]
    for title, cards in _figure_sections(run):
        body.append(f"<h2>{_esc(title)}</h2><div class=\"figures\">{''.join(cards)}</div>")
    body.append(f"<h2>Models</h2><ul>{model_rows}</ul><h2>Data</h2><ul>{data_rows or '<li>none</li>'}</ul>")
    if skipped:
        body.append(f"<h2>Skipped</h2><ul>{skipped}</ul>")
    body.append(
        f"<p class=\"note\">fetalclip {_esc(provenance.get('fetalclip_version'))}, commit <code>{_esc(provenance.get('git_commit'))}</code>, "
        f"seed {_esc(provenance.get('seed'))}, bootstrap {_esc(provenance.get('n_bootstrap'))} resamples, {_esc(provenance.get('created_utc'))}.</p>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>FetalCLIP benchmark</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


OUTPUT_FILES = ("results.json", "results.csv", "results.md", "report.html")


def write_report(run: BenchmarkRun, out_dir: str | Path) -> dict[str, Path]:
    """Write all four outputs (atomically) and return their paths."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in OUTPUT_FILES}
    write_json_atomic(paths["results.json"], results_document(run))
    write_text_atomic(paths["results.csv"], _csv_text(csv_rows(run)))
    write_text_atomic(paths["results.md"], markdown_report(run))
    write_text_atomic(paths["report.html"], html_report(run))
    return paths


__all__ = [
    "OUTPUT_FILES",
    "PUBLISHED_SOURCE",
    "best_rows",
    "html_report",
    "markdown_metrics",
    "markdown_report",
    "markdown_table",
    "primary_metric",
    "results_document",
    "table_specs",
    "write_report",
]
