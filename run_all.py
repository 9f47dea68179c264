"""Run the notebooks end to end with papermill, on the built-in sample or real data.

    python run_all.py                                   # built-in sample -> runs/sample/
    python run_all.py --bson train_example.bson --categories category_names.csv
    python run_all.py --only 01,02 -p limit 500 --name quick

Each notebook gets the parameters its `parameters` cell declares (data paths,
work_dir shared by all notebooks of a run, limit, and any `-p name value`).
Executed copies and a summary go to runs/<name>/. Exit status is 1 if any
notebook failed; one whose service is unreachable is reported as skipped.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import papermill as pm
from jupyter_client import AsyncKernelManager

from helpers.core.paths import RUNS_DIR, resolve_data

ROOT = Path(__file__).resolve().parent  # run_all.py sits beside notebooks/
NOTEBOOKS = ROOT / "notebooks"
# Kernels inherit these: keep TensorFlow's C++ logs (absl) out of the run's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")
# Idle OpenMP threads (FAISS) sleep instead of spinning: on a busy machine spinning threads
# make each short search wait for a descheduled sibling (see helpers/index/faiss_index.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A notebook failing with one of these has no data to work on: the ones after it would fail
# the same way, so they are reported as skipped with its message.
NO_DATA_ERRORS = {"NoProductsError"}
ES_NOTEBOOKS = {"05", "06"}  # the notebooks that search with Elasticsearch
PROGRESS_EVERY = 15.0  # seconds between two progress lines of a running notebook
NEEDS_ES = {"05"}  # ...and the one that is only about it (06 compares the others without)


class IpcKernelManager(AsyncKernelManager):
    """Kernels talk to papermill over Unix sockets in a private (0700) folder, not TCP.

    ipykernel logs "Kernel is running over TCP without encryption" to the terminal at every
    kernel start on TCP (its own logger, in the kernel process, so no filter here can catch
    it). Over IPC the warning has no reason to be, and no other local user can connect.
    """

    socket_dir: str | None = None  # set by run(); None: the system temp folder

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if os.name == "posix":
            self.transport = "ipc"
            folder = self.socket_dir or tempfile.gettempdir()
            self.ip = os.path.join(folder, f"k-{uuid.uuid4().hex[:8]}")

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        # The kernel draws figures inline. Some libraries set MPLBACKEND=Agg in the calling
        # process (Streamlit does, on import); inherited, it would make every plt.show() in
        # the notebooks draw nothing.
        env = dict(kw.get("env") or os.environ)
        env.pop("MPLBACKEND", None)
        kw["env"] = env
        await super()._async_launch_kernel(kernel_cmd, **kw)


class Progress:
    """Where a running notebook is, beside papermill's bar of cells: the last line its
    kernel wrote to stderr, where the notebooks' tqdm bars go (embedding, scans, builds),
    every ``every`` seconds. A first-time user never waits a silent
    minute; a log gets one line per ``every`` seconds, not every bar refresh."""

    def __init__(self, name: str, every: float | None = None) -> None:
        self.name = name
        self.every = PROGRESS_EVERY if every is None else every
        self.last = time.monotonic()

    def write(self, text: str) -> int:  # the kernel's stderr (papermill's stderr_file)
        lines = [x.strip() for x in text.replace("\r", "\n").split("\n") if x.strip()]
        if lines and time.monotonic() - self.last >= self.every:
            print(f"    {self.name}: {lines[-1][:110]}", flush=True)
            self.last = time.monotonic()
        return len(text)

    def flush(self) -> None:
        pass


def find_notebooks(only: str | None) -> list[Path]:
    """The notebooks present, in order; ``only`` is a comma list of prefixes ("01,03")."""
    books = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(b.name.startswith(w) for b in books)]
        if unknown:
            names = ", ".join(b.stem for b in books)
            raise SystemExit(f"--only: no notebook starts with {unknown}; present: {names}")
        books = [b for b in books if any(b.name.startswith(w) for w in wanted)]
    return books


def parse_value(text: str) -> object:
    """``-p`` values as Python literals where they parse (10, None, 'a', [1,2]), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run(args: argparse.Namespace) -> int:
    try:
        bson_path, categories = resolve_data(args.bson, args.categories)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    if categories is not None and not categories.is_file():
        raise SystemExit(f"error: category file not found: {categories}")
    if bson_path.stat().st_size == 0:
        raise SystemExit(f"error: {bson_path} is empty (0 bytes): it holds no products")
    name = args.name or ("sample" if args.bson is None else Path(bson_path).stem)
    # Absolute: the kernels run in the checkout's root, this process maybe elsewhere.
    run_dir = ((args.out or RUNS_DIR) / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "bson_path": str(bson_path),
        "categories_path": str(categories) if categories else None,
        "work_dir": str(run_dir / "artifacts"),
        "interactive": False,  # static figures: widgets do not survive papermill
    }
    extra = {k: parse_value(v) for k, v in args.param}
    books = find_notebooks(args.only)
    if not books:
        print("no notebooks to run", file=sys.stderr)
        return 1
    declared_any: set[str] = set()
    rows = []
    print(f"run '{name}': {bson_path.name} -> {run_dir}")
    started = time.perf_counter()  # the total printed at the end: node start included
    # The kernels inherit these: text bars (helpers.core.progress) that Progress can relay
    # and a saved notebook keeps, updated every 5 s (tqdm reads TQDM_* defaults).
    os.environ.setdefault("VPS_TEXT_PROGRESS", "1")
    os.environ.setdefault("TQDM_MININTERVAL", "5")
    no_data = ""
    node = local_elasticsearch(books, extra, args.no_es)
    with tempfile.TemporaryDirectory(prefix="vps-kernels-") as sockets, node_stopped(node):
        IpcKernelManager.socket_dir = sockets
        for nb in books:
            declared = set(pm.inspect_notebook(str(nb)))
            declared_any |= declared
            params = {k: v for k, v in {**common, **extra}.items() if k in declared}
            out = run_dir / nb.name
            t0 = time.perf_counter()
            status, note = "ok", ""
            why = "" if node is None or no_data else node_ready(node, nb)
            if why and os.environ.get("ELASTICSEARCH_URL") == node.url:
                os.environ.pop("ELASTICSEARCH_URL")  # 06 then compares without the node
            if no_data:
                status, note = "skipped", no_data
            elif why and nb.stem[:2] in NEEDS_ES:
                status, note = "skipped", why
            else:
                note = f"without Elasticsearch: {why}"[:200] if why else ""
                try:
                    print(f"  {nb.stem} ...", flush=True)
                    pm.execute_notebook(str(nb), str(out), parameters=params,
                                        cwd=str(ROOT), kernel_name=args.kernel,
                                        progress_bar={"desc": f"    {nb.stem}", "file": sys.stdout,
                                                      "mininterval": PROGRESS_EVERY,
                                                      "leave": False},
                                        stderr_file=Progress(nb.stem),
                                        request_save_on_cell_execute=False,
                                        kernel_manager_class=IpcKernelManager)
                except pm.PapermillExecutionError as exc:
                    if exc.ename == "ServiceUnavailable":
                        status, note = "skipped", exc.evalue
                    else:
                        status, note = "failed", f"{exc.ename}: {exc.evalue}"[:200]
                    if exc.ename in NO_DATA_ERRORS:
                        no_data = f"no data: {exc.evalue}"[:200]
            secs = time.perf_counter() - t0
            rows.append({"notebook": nb.stem, "status": status, "seconds": round(secs, 1),
                         "note": note, "output": str(out)})
            print(f"  {nb.stem:<20} {status:<8} {secs:7.1f} s  {note}", flush=True)
    unused = set(extra) - declared_any
    if unused:
        print(f"warning: -p {sorted(unused)} not declared by any notebook run", file=sys.stderr)
    write_summary(run_dir, name, common, extra, rows)
    failed = [r["notebook"] for r in rows if r["status"] == "failed"]
    print(f"{len(rows) - len(failed)}/{len(rows)} notebooks ok or skipped in "
          f"{time.perf_counter() - started:.0f} s; summary: {run_dir / 'summary.md'}")
    return 1 if failed else 0


def local_elasticsearch(books: list[Path], extra: dict, disabled: bool) -> Any:
    """A local node for the notebooks that use one (05, 06) when the run names none
    (``-p es_url``, $ELASTICSEARCH_URL): started now, in the background, so that it boots
    while 01-04 run, as the tests start theirs. None if no notebook needs it."""
    if disabled or "es_url" in extra or os.environ.get("ELASTICSEARCH_URL") \
            or not any(nb.stem[:2] in ES_NOTEBOOKS for nb in books):
        return None
    from helpers.core.errors import ServiceUnavailable
    from helpers.services.elasticsearch import start_elasticsearch

    print("starting a local Elasticsearch node for 05/06 (in the background; --no-es: none)",
          flush=True)
    try:
        node = start_elasticsearch(wait=False)
    except (ServiceUnavailable, OSError) as exc:  # no Java, no Maven: 05 says so, skipped
        print(f"  no local Elasticsearch node: {str(exc).splitlines()[0]}", flush=True)
        return None
    os.environ["ELASTICSEARCH_URL"] = node.url  # the kernels inherit it
    return node


def node_ready(node: Any, nb: Path) -> str:
    """Wait for the node before a notebook that uses it; the reason it is not up, or ""."""
    if nb.stem[:2] not in ES_NOTEBOOKS or node.start_seconds:  # not needed, or up already
        return ""
    from helpers.core.errors import ServiceUnavailable
    from helpers.services.elasticsearch import wait_for_elasticsearch

    try:
        wait_for_elasticsearch(node)
    except ServiceUnavailable as exc:
        return f"the local Elasticsearch node did not start: {str(exc).splitlines()[0]}"[:200]
    print(f"  Elasticsearch node up at {node.url} in {node.start_seconds:.0f} s", flush=True)
    return ""


@contextlib.contextmanager
def node_stopped(node: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if node is not None:
            from helpers.core.errors import ServiceUnavailable
            from helpers.services.elasticsearch import wait_for_elasticsearch

            if not node.start_seconds:
                with contextlib.suppress(ServiceUnavailable):  # a failed start cleans up
                    wait_for_elasticsearch(node)  # learns the node's pid, to stop it
            node.cleanup()  # stops the node, removes its data
            os.environ.pop("ELASTICSEARCH_URL", None)


def write_summary(run_dir: Path, name: str, common: dict, extra: dict, rows: list) -> None:
    (run_dir / "summary.json").write_text(
        json.dumps({"name": name, "parameters": {**common, **extra}, "notebooks": rows},
                   indent=2, default=str))
    lines = [f"# Run `{name}`", "", f"data: `{common['bson_path']}`", "",
             "| notebook | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']} | {r['note']} |"
              for r in rows]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ap.add_mutually_exclusive_group()
    data.add_argument("--sample", action="store_true", help="the built-in sample (default)")
    data.add_argument("--bson", type=Path, help="a Cdiscount BSON file (train.bson, ...)")
    ap.add_argument("--categories", type=Path, help="category_names.csv (default: beside --bson)")
    ap.add_argument("--only", help="comma list of notebook prefixes, e.g. 01,03")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"), help="notebook parameter (repeatable)")
    ap.add_argument("--name", help="run name (default: sample, or the BSON file's stem)")
    ap.add_argument("--out", type=Path, help=f"runs folder (default {RUNS_DIR})")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel (default python3)")
    ap.add_argument("--no-es", action="store_true",
                    help="do not start a local Elasticsearch node for 05/06 (they are then "
                         "skipped unless ELASTICSEARCH_URL or -p es_url names one)")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
