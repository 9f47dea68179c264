"""Streamlit app: pick a product, see the products that look like it.

    streamlit run apps/streamlit_app.py                   # runs/sample/artifacts (make demo)
    VPS_ARTIFACTS=runs/ivf/artifacts streamlit run apps/streamlit_app.py

The artifacts are opened once per server process (`st.cache_resource`), never rebuilt:
no model runs at start-up (the original app re-embedded the catalogue there). A photo
upload is embedded on demand by the model that made the method's vectors. The logic lives in
`helpers.serve` (`related`, `pages`, `recent`, `inputs`); this file only lays it out.
"""

from __future__ import annotations

import os
import sys
from html import escape
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` from anywhere

from helpers.catalogue.protocol import UnknownProductError  # noqa: E402
from helpers.index.recommend import DEFAULT_STRATEGY, LABELS, STRATEGIES  # noqa: E402
from helpers.serve.inputs import RelatedError  # noqa: E402
from helpers.serve.loader import (  # noqa: E402
    ArtifactMissing,
    configure_app_process,
    load_artifacts,
)
from helpers.serve.pages import category_names, describe, find_products  # noqa: E402
from helpers.serve.recent import RecentlyViewed  # noqa: E402
from helpers.serve.related import Related  # noqa: E402

RECENT_N = 5
NEGATIVE_N = 5  # "not this" products kept in the session
COLUMNS = 5

CSS = """
<style>
 div[data-testid="stImage"] img { border-radius: 6px; background: #fafafa; }
 .vps-path { color: #6b7385; font-size: 0.95rem; }
 .vps-score { color: #6b7385; font-size: 0.8rem; margin-top: -0.4rem; }
 .vps-label { font-size: 0.85rem; white-space: nowrap; overflow: hidden;
              text-overflow: ellipsis; }
</style>
"""


@st.cache_resource(show_spinner="Opening the search artifacts…")
def service(work_dir: str | None, mongo_uri: str | None) -> Related:
    configure_app_process()
    return Related(load_artifacts(work_dir, mongo_uri=mongo_uri))


@st.cache_resource
def categories(_rel: Related, work_dir: str | None) -> dict[int, str]:
    return category_names(_rel.art.catalogue)


@st.cache_data(max_entries=2000, show_spinner=False)
def picture(work_dir: str | None, product_id: int, index: int) -> bytes:
    rel = service(work_dir, os.environ.get("VPS_MONGO_URI"))
    p = rel.art.catalogue.product(product_id)
    return rel.art.images.pictures(p)[index]


def view(product_id: int) -> None:
    """Show a product: it becomes the current one and joins the recently viewed."""
    st.session_state.current = int(product_id)
    recent = RecentlyViewed(RECENT_N, st.session_state.get("recent", []))
    recent.add(product_id)
    st.session_state.recent = recent.ids


def not_this(product_id: int) -> None:
    """A tile's "not this": a negative example for the recommendations."""
    negative = RecentlyViewed(NEGATIVE_N, st.session_state.get("negative", []))
    negative.add(product_id)
    st.session_state.negative = negative.ids


def forget_negatives() -> None:
    st.session_state.negative = []


def on_pick() -> None:
    pid = st.session_state.get("picker")
    if pid is not None:
        view(pid)


def grid(hits: list[dict], work_dir: str | None, key: str, columns: int = COLUMNS,
         dislike: bool = False) -> None:
    """Product cards with picture, label, score and a button to view the product (and,
    with ``dislike``, one to mark it "not this")."""
    for start in range(0, len(hits), columns):
        cols = st.columns(columns)
        for col, h in zip(cols, hits[start:start + columns], strict=False):
            with col:
                if h.get("picture") is not None:
                    st.image(picture(work_dir, h["product_id"], h["picture"]), width="stretch")
                else:
                    st.caption("no picture")
                title = escape(" › ".join(h["category_path"] or []))
                st.markdown(f'<div class="vps-label" title="{title}">{escape(h["label"])}</div>',
                            unsafe_allow_html=True)
                if "score" in h:
                    st.markdown(f'<div class="vps-score">{h["product_id"]} · '
                                f'{h["score"]:.3f}</div>', unsafe_allow_html=True)
                st.button("View", key=f"{key}-{h['product_id']}", on_click=view,
                          args=(h["product_id"],), width="stretch")
                if dislike:
                    st.button("Not this", key=f"not-{key}-{h['product_id']}",
                              on_click=not_this, args=(h["product_id"],), width="stretch")


def main() -> None:
    st.set_page_config(page_title="Visual product search", page_icon="🛍️", layout="wide")
    st.markdown(CSS, unsafe_allow_html=True)
    work_dir = os.environ.get("VPS_ARTIFACTS") or None
    try:
        rel = service(work_dir, os.environ.get("VPS_MONGO_URI") or None)
    except ArtifactMissing as exc:
        st.title("Visual product search")
        st.error(f"The search artifacts are not there yet. {exc}")
        st.stop()
    art = rel.art
    names = categories(rel, work_dir)

    # -- sidebar: method, k, picker ------------------------------------------------------
    with st.sidebar:
        st.header("Search")
        avail = art.available()
        method = st.radio("Method", avail, index=avail.index(art.default_method),
                          format_func=lambda m: art.methods[m].label, key="method")
        for m, why in art.unavailable.items():
            st.caption(f"{art.methods[m].label}: unavailable. {why}")
        k = st.slider("Related products", 1, 30, 10, key="k")
        strategy = st.selectbox("Related to recently viewed, by", STRATEGIES,
                                index=STRATEGIES.index(DEFAULT_STRATEGY),
                                format_func=LABELS.get, key="strategy")
        # A caption, not a help tooltip: the tooltip opens over the page's first tiles.
        st.caption("mean: one search with the mean of what you viewed; best score: the "
                   "closest to any one of them; round robin: each one's neighbours in turn")
        mmr = st.slider("Diversity (MMR)", 0.0, 1.0, 0.0, 0.1, key="mmr")
        query = st.text_input("Find a product", placeholder="product id, category id or name",
                              key="query")
        found = find_products(art.catalogue, query, limit=50, categories=names)
        if found:
            st.selectbox("Product", [p.product_id for p in found], index=None,
                         format_func=lambda pid: f"{pid} · {art.catalogue.product(pid).label}",
                         key="picker", on_change=on_pick, placeholder="choose a product")
        else:
            st.info("No product matches this search.")

    st.title("Visual product search")
    current = st.session_state.get("current")
    tab_product, tab_upload = st.tabs(["Product", "Search by photo"])

    with tab_product:
        if current is None:
            st.info("Pick a product in the sidebar (search by id or category), or click "
                    "one below, to see the products that look like it.")
            grid(describe_products(art, art.catalogue.page(0, COLUMNS)), work_dir, "start")
        else:
            show_product(rel, int(current), method, k, work_dir, strategy, mmr)

    with tab_upload:
        up = st.file_uploader("A photo of a product", type=["jpg", "jpeg", "png", "webp"],
                              key="upload")
        if up is not None:
            try:
                hits = rel.search_upload(up.getvalue(), k, method)
            except RelatedError as exc:
                st.warning(str(exc))
            else:
                left, right = st.columns([1, 4])
                left.image(up.getvalue(), caption="your photo", width="stretch")
                with right:
                    st.subheader(f"Looks like your photo ({art.methods[method].label})")
                    grid(describe(art.catalogue, hits), work_dir, "upload", COLUMNS - 1)


def describe_products(art, products) -> list[dict]:
    return [{"product_id": p.product_id, "label": p.label,
             "category_path": list(p.category_path) if p.category_path else None,
             "picture": p.usable_images[0] if p.usable_images else None} for p in products]


def show_product(rel: Related, pid: int, method: str, k: int, work_dir: str | None,
                 strategy: str = DEFAULT_STRATEGY, mmr: float = 0.0) -> None:
    art = rel.art
    try:
        p = art.catalogue.product(pid)
    except UnknownProductError:
        st.warning(f"Product {pid} is no longer in the catalogue.")
        return
    left, right = st.columns([1, 3])
    with left:
        if p.usable_images:
            st.image(picture(work_dir, pid, p.usable_images[0]), width="stretch")
        else:
            st.caption("no usable picture")
    with right:
        st.subheader(f"Product {pid}")
        path = " › ".join(p.category_path) if p.category_path else "unknown category"
        st.markdown(f'<div class="vps-path">{escape(path)}</div>', unsafe_allow_html=True)
        st.caption(f"{p.n_usable} picture(s) · category {p.category_id}")
        same = st.toggle("Same category only", key="same_category")
        show_all = st.checkbox("Show near duplicates too", key="show_all")

    st.subheader(f"Looks like it ({art.methods[method].label})")
    try:
        hits = rel.related(pid, k, method, p.category_id if same else None,
                           collapse=not show_all)
    except RelatedError as exc:
        st.warning(str(exc))
        hits = None
    if hits == []:
        st.info("No related products for these settings.")
    elif hits:
        grid(describe(art.catalogue, hits), work_dir, "related", dislike=True)

    recent = list(st.session_state.get("recent", []))
    if len(recent) > 1:
        st.subheader("Related to what you recently viewed")
        st.caption(f"by {LABELS[strategy]}" + (f", diversity {mmr:.1f}" if mmr else ""))
        negative = list(st.session_state.get("negative", []))
        try:
            rhits = rel.recommend(recent, negative, k, method, strategy, mmr)
        except RelatedError as exc:
            st.warning(str(exc))
            rhits = None
        if rhits == []:
            st.info("Nothing new to suggest yet.")
        elif rhits:
            grid(describe(art.catalogue, rhits), work_dir, "recent-related", dislike=True)
        st.subheader("Recently viewed")
        shown = known_products(art, recent)
        grid(describe_products(art, shown), work_dir, "viewed", max(len(shown), COLUMNS))
    negative = list(st.session_state.get("negative", []))
    if negative:
        st.subheader("Not for you")
        gone = known_products(art, negative)
        grid(describe_products(art, gone), work_dir, "negative", max(len(gone), COLUMNS))
        st.button("Forget these", key="forget-negative", on_click=forget_negatives)


def known_products(art, ids: list[int]) -> list:
    """The products of ids kept in the session, those gone from the catalogue passed over."""
    out = []
    for r in ids:
        try:
            out.append(art.catalogue.product(r))
        except UnknownProductError:
            continue
    return out


main()
