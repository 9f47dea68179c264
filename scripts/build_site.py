"""A static site of a run: its executed notebooks as HTML pages, readable offline.

    python scripts/build_site.py                       # runs/sample -> runs/sample/site/
    python scripts/build_site.py runs/ivf --screenshots

`index.html` is the run's summary table (notebook, status, seconds, note; from
summary.json) with a link to one page per executed notebook, `<notebook>.html`.
Pages are nbconvert's JupyterLab template with nothing fetched from the network:
figures are embedded PNGs (data: URLs), CSS is inline, and the scripts that would come
from CDNs (require.js, MathJax, Mermaid, the widget manager) are left out. LaTeX in
Markdown would therefore show as its source; the notebooks have none.

An ipywidget output becomes static HTML drawn from the widget state that the run saved
in the notebook (papermill/nbclient save it): boxes lay out their children, a progress
bar (tqdm) is drawn at its final value, a dropdown or slider shows its label and value,
and an Output widget shows what it captured, figures included. Where no state was
saved, the widget's text form stands in.

``--screenshots`` opens every page in headless Chromium (Playwright driving Debian's
/usr/bin/chromium, no browser download) with the network cut off, and saves a full-page
picture of each to `site/screenshots/<page>.png`.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

import nbformat

from helpers.core.paths import RUNS_DIR

CHROMIUM = Path("/usr/bin/chromium")
# Where the notebooks were written: a Markdown image's relative path starts there.
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STATIC_WIDGET = "vps-static-widget"  # the class of a widget drawn from its saved state

# nbconvert's lab template, minus everything it would load from a CDN at view time.
PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>
nav.vps-nav { font: 14px/1.4 system-ui, sans-serif; padding: 8px 16px;
  border-bottom: 1px solid #ddd; background: #fafafa; }
nav.vps-nav a { margin-right: 1.5em; }
.vps-static-widget .vps-row { display: flex; flex-wrap: wrap; gap: 0.6em;
  align-items: center; }
.vps-static-widget .vps-control { font: 13px system-ui, sans-serif; }
.vps-static-widget progress { width: 16em; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.vps_nav }}
{%- endblock body_header -%}
"""

INDEX_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60em; margin: 2em auto;
  padding: 0 1em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; }
.ok { color: #1b7f3b; } .failed { color: #b3261e; font-weight: bold; } .skipped { color: #8a6d00; }
code { background: #f3f3f3; padding: 0 3px; }
"""


# ---------------------------------------------------------------- widgets -> static HTML

def _ref(value: object) -> str | None:
    """The model id of an ``IPY_MODEL_<id>`` reference."""
    if isinstance(value, str) and value.startswith("IPY_MODEL_"):
        return value[len("IPY_MODEL_"):]
    return None


def _label(state: dict) -> str:
    text = state.get("description") or ""
    return f"<span>{html.escape(str(text))}</span> " if text else ""


def _output_html(output: dict, models: dict, seen: frozenset) -> str:
    """One output captured by an Output widget, as HTML."""
    kind = output.get("output_type")
    if kind == "stream":
        return f"<pre>{html.escape(''.join(output.get('text', '')))}</pre>"
    if kind == "error":
        return f"<pre>{html.escape(output.get('ename', ''))}: " \
               f"{html.escape(output.get('evalue', ''))}</pre>"
    data = output.get("data", {})
    if WIDGET_VIEW in data:
        return _widget_html(data[WIDGET_VIEW].get("model_id", ""), models, seen,
                            str(data.get("text/plain", "")))
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            b64 = "".join(data[mime]).replace("\n", "")
            return f'<img src="data:{mime};base64,{b64}" alt="figure">'
    if "image/svg+xml" in data:
        return "".join(data["image/svg+xml"])
    if "text/html" in data:
        return "".join(data["text/html"])
    return f"<pre>{html.escape(''.join(data.get('text/plain', '')))}</pre>"


def _widget_html(model_id: str, models: dict, seen: frozenset = frozenset(),
                 text: str = "") -> str:
    """A widget drawn from its saved state (``models``: model id -> {model_name, state})."""
    model = models.get(model_id)
    if model is None or model_id in seen:
        return f"<pre>{html.escape(text)}</pre>" if text else ""
    seen = seen | {model_id}
    name, state = model.get("model_name", ""), model.get("state", {})
    if "children" in state:  # HBox, VBox, Box, GridBox, Tab, Accordion
        inner = "".join(_widget_html(_ref(c) or "", models, seen)
                        for c in state.get("children", []))
        return f'<div class="vps-row">{inner}</div>' if name == "HBoxModel" else \
               f"<div>{inner}</div>"
    if name == "OutputModel":
        return "".join(_output_html(o, models, seen) for o in state.get("outputs", []))
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<span class="vps-control">{_label(state)}{state.get("value", "")}</span>'
    if name.endswith("ProgressModel"):
        low, high = float(state.get("min", 0)), float(state.get("max", 100))
        value = float(state.get("value", 0)) - low
        return (f'<span class="vps-control">{_label(state)}'
                f'<progress value="{value:g}" max="{high - low:g}"></progress></span>')
    if "_options_labels" in state:  # Dropdown, Select, RadioButtons, ToggleButtons
        labels, index = state["_options_labels"], state.get("index")
        picked = ", ".join(labels[i] for i in (index if isinstance(index, list) else [index])
                           if i is not None and 0 <= i < len(labels))
        return f'<span class="vps-control">{_label(state)}<b>{html.escape(picked)}</b></span>'
    if name == "ButtonModel":
        return f'<button disabled>{html.escape(str(state.get("description", "")))}</button>'
    if "value" in state and not isinstance(state["value"], dict):
        value = html.escape(str(state["value"]))
        return f'<span class="vps-control">{_label(state)}<b>{value}</b></span>'
    return ""  # layouts, styles and widgets without a visible value


def static_widgets(nb: nbformat.NotebookNode) -> int:
    """Replace every widget output of ``nb`` by static HTML (in place); return how many.

    The saved widget state leaves the notebook's metadata, so no page refers to it."""
    saved = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {})
    models = saved.get("state", {})
    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            text = str(data.get("text/plain", ""))
            body = _widget_html(data[WIDGET_VIEW].get("model_id", ""), models, text=text)
            output["data"] = {"text/html": f'<div class="{STATIC_WIDGET}">{body}</div>'}
            count += 1
    return count


# ---------------------------------------------------------------- pages

def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    # A script is never shown (none could load); a figure is, when the output has one.
    priority = [m for m in HTMLExporter().default_config.NbConvertBase.display_data_priority
                if m not in (WIDGET_VIEW, "application/javascript")]
    return HTMLExporter(config=Config({"NbConvertBase": {"display_data_priority": priority}}),
                        template_name="lab", template_file="vps_site.html.j2",
                        extra_loaders=[DictLoader({"vps_site.html.j2": PAGE_TEMPLATE})],
                        embed_images=True)


def _nav(run_name: str, books: list[str], i: int) -> str:
    links = [f'<a href="index.html">&larr; run {html.escape(run_name)}</a>']
    if i > 0:
        links.append(f'<a href="{books[i - 1]}.html">previous: {html.escape(books[i - 1])}</a>')
    if i + 1 < len(books):
        links.append(f'<a href="{books[i + 1]}.html">next: {html.escape(books[i + 1])}</a>')
    return f'<nav class="vps-nav">{"".join(links)}</nav>'


def run_rows(run_dir: Path) -> tuple[str, list[dict], dict]:
    """(run name, one row per notebook, parameters) from the run's summary.json; without
    one (a run interrupted before its summary), from the executed notebooks present."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        rows = [{k: r.get(k, "") for k in ("notebook", "status", "seconds", "note")}
                for r in data.get("notebooks", [])]
        return data.get("name", run_dir.name), rows, data.get("parameters", {})
    rows = [{"notebook": p.stem, "status": "?", "seconds": "", "note": "no summary.json"}
            for p in sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))]
    return run_dir.name, rows, {}


def _index_html(name: str, rows: list[dict], params: dict, pages: set[str]) -> str:
    esc = html.escape
    body = []
    for r in rows:
        nb = str(r["notebook"])
        cell = f'<a href="{esc(nb)}.html">{esc(nb)}</a>' if nb in pages else esc(nb)
        status = str(r["status"])
        body.append(f'<tr><td>{cell}</td><td class="{esc(status)}">{esc(status)}</td>'
                    f'<td class="num">{esc(str(r["seconds"]))}</td>'
                    f'<td>{esc(str(r["note"]))}</td></tr>')
    total = sum(float(r["seconds"]) for r in rows if isinstance(r["seconds"], (int, float)))
    param_rows = "".join(f"<tr><td><code>{esc(str(k))}</code></td><td><code>{esc(str(v))}"
                         f"</code></td></tr>" for k, v in params.items())
    params_html = (f"<h2>Parameters</h2><table>{param_rows}</table>" if param_rows else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Run {esc(name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<style>{INDEX_CSS}</style></head>
<body>
<h1>Run <code>{esc(name)}</code></h1>
<p>The executed notebooks of this run, one page each, with every figure.
Built by <code>make site</code> (<code>scripts/build_site.py</code>).</p>
<table id="summary">
<tr><th>notebook</th><th>status</th><th>seconds</th><th>note</th></tr>
{"".join(body)}
<tr><td>total</td><td></td><td class="num">{total:.1f}</td><td></td></tr>
</table>
{params_html}
</body>
</html>
"""


def build(run_dir: Path, out: Path | None = None) -> Path:
    """Render ``run_dir``'s executed notebooks into ``out`` (default ``run_dir/site``);
    return the index page."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run at {run_dir} (make demo writes runs/sample)")
    out = Path(out) if out else run_dir / "site"
    name, rows, params = run_rows(run_dir)
    books = [str(r["notebook"]) for r in rows if (run_dir / f"{r['notebook']}.ipynb").is_file()]
    if not books:
        raise FileNotFoundError(f"no executed notebook in {run_dir}")
    out.mkdir(parents=True, exist_ok=True)
    # Pages and screenshots of an earlier build whose notebooks this run may not have.
    for stale in [*out.glob("[0-9][0-9]_*.html"), *out.glob("screenshots/*.png")]:
        stale.unlink()
    exporter = _exporter()
    for i, stem in enumerate(books):
        nb = nbformat.read(run_dir / f"{stem}.ipynb", as_version=4)
        static_widgets(nb)
        page, _ = exporter.from_notebook_node(
            nb, resources={"metadata": {"name": stem, "path": str(NOTEBOOKS)},
                           "vps_nav": _nav(name, books, i)})
        (out / f"{stem}.html").write_text(page, encoding="utf-8")
    index = out / "index.html"
    index.write_text(_index_html(name, rows, params, set(books)), encoding="utf-8")
    return index


# ---------------------------------------------------------------- screenshots

ALL_IMAGES = """() => { const imgs = [...document.images];
  const loaded = imgs.filter(i => i.complete && i.naturalWidth > 0);
  return {count: imgs.length, loaded: loaded.length}; }"""


def screenshots(site: Path, chromium: Path = CHROMIUM, width: int = 1280) -> dict[str, dict]:
    """Open every page of ``site`` in headless Chromium, the network cut off, and save a
    full-page screenshot of each to ``site/screenshots/<page>.png``. Returns, per page:
    the screenshot, its images and how many loaded, and the network requests it tried."""
    from playwright.sync_api import sync_playwright

    if not chromium.exists():
        raise FileNotFoundError(f"{chromium} not found: apt-get install chromium "
                                "(scripts/install_system.sh)")
    shots = site / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": width, "height": 900})
            for page_file in sorted(site.glob("*.html")):
                tried: list[str] = []

                def cut_off(route, tried=tried):
                    tried.append(route.request.url)
                    route.abort()

                page = context.new_page()
                page.route(re.compile(r"^(https?|wss?)://"), cut_off)
                page.goto(page_file.resolve().as_uri(), wait_until="load")
                images = page.evaluate(ALL_IMAGES)
                path = shots / f"{page_file.stem}.png"
                page.screenshot(path=str(path), full_page=True)
                page.close()
                report[page_file.stem] = {"screenshot": path, "network": tried, **images}
        finally:
            browser.close()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path, default=RUNS_DIR / "sample",
                    help=f"a run folder of run_all.py (default {RUNS_DIR / 'sample'})")
    ap.add_argument("--out", type=Path, help="site folder (default <run>/site)")
    ap.add_argument("--screenshots", action="store_true",
                    help="also save a full-page screenshot of each page (headless Chromium)")
    args = ap.parse_args(argv)
    try:
        index = build(args.run, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"site: {index}")
    if args.screenshots:
        for stem, shot in screenshots(index.parent).items():
            print(f"  {stem:<20} {shot['loaded']}/{shot['count']} images  {shot['screenshot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
