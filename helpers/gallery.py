"""Image grids for the notebooks: catalogue samples and query + neighbours.

Products come from a `Catalogue` and their pictures from an `ImageSource` (the BSON
store by offset, a JPEG folder...). Item ids are product ids at product level and packed
image ids at image level (`helpers.core.ids`): the gallery decodes them to show the picture
that was matched. Hits are `helpers.index.hits.Hit`; ``Hit``, ``as_hit`` and ``to_hits``
are re-exported here for the notebooks.
``Gallery`` is the live view (a dropdown of query products and a k slider,
ipywidgets) for JupyterLab; with ``interactive=False`` -- what ``run_all.py``
passes -- it draws the same grid as a static matplotlib figure, so papermill
and HTML exports still show it.

Imports matplotlib, ipywidgets, Pillow, helpers.core, helpers.ingest.jpeg,
helpers.catalogue and helpers.index.hits; never an engine or a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from helpers.catalogue.image_source import BsonImageSource, ImageSource
from helpers.catalogue.image_source import image as source_image
from helpers.catalogue.protocol import Catalogue
from helpers.core import ids as item_ids
from helpers.index.hits import Hit, as_hit, to_hits
from helpers.ingest.jpeg import decode_image

# A search callable: (product_id, k) -> list of hits, best first.
SearchFn = Callable[[int, int], Sequence[Hit]]


class ProductImages:
    """Pictures and labels of catalogue products, by product id.

    ``ProductImages(catalogue, source)`` with a `Catalogue` and an `ImageSource` (or the
    path of a BSON dump).
    """

    def __init__(self, catalogue: Catalogue,
                 source: ImageSource | str | os.PathLike) -> None:
        self.catalogue = catalogue
        self.source = (BsonImageSource(source) if isinstance(source, str | os.PathLike)
                       else source)

    def image(self, product_id: int, image_index: int | None = None) -> np.ndarray:
        """One picture (the first usable by default); a grey tile if it does not decode."""
        return source_image(self.source, self.catalogue.product(int(product_id)), image_index)

    def new_photo(self, product_id: int, path: str | os.PathLike) -> Path:
        """Save a picture of ``product_id`` that is *not* in the catalogue: mirrored,
        cropped by 10% and re-encoded, as a shopper's own photo of the item would be."""
        from PIL import Image, ImageOps

        img = ImageOps.mirror(Image.fromarray(self.image(product_id)))
        w, h = img.size
        img = img.crop((w // 10, h // 10, w, h)).resize((w, h), Image.BICUBIC)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=85)
        return path

    def label(self, product_id: int, width: int = 22) -> str:
        name = self.catalogue.product(int(product_id)).label
        return name if len(name) <= width else name[: width - 1] + "…"


def product_grid(
    images: ProductImages, product_ids: Sequence[int], cols: int = 6, title: str | None = None
) -> plt.Figure:
    """A grid of products (first picture each) captioned with id and category."""
    rows = max(1, -(-len(product_ids) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, pid in zip(axes.flat, product_ids, strict=False):
        ax.imshow(images.image(int(pid)))
        ax.set_title(f"{pid}\n{images.label(int(pid))}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def neighbours_figure(
    images: ProductImages, query: Hit | np.ndarray | str | os.PathLike, hits: Sequence[Hit],
    title: str | None = None,
) -> plt.Figure:
    """The query (framed in red) then its neighbours with id, category and score.

    ``query`` is a catalogue product (a ``Hit``), or a picture from elsewhere: an RGB
    array or an image file.
    """
    if isinstance(query, str | os.PathLike):
        query = decode_image(Path(query).read_bytes())
    tiles = [query, *hits]
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.0 * len(tiles), 2.6), squeeze=False)
    for j, (ax, h) in enumerate(zip(axes[0], tiles, strict=True)):
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0 and isinstance(h, np.ndarray):
            ax.imshow(h)
            ax.set_title("query\n(new photo)", fontsize=8)
        else:
            ax.imshow(images.image(h.product_id, h.image_index))
            head = "query" if j == 0 else f"#{j}  {h.score:.3f}" if h.score is not None else f"#{j}"
            ax.set_title(f"{head}\n{h.product_id}\n{images.label(h.product_id, 18)}", fontsize=8)
        if j == 0:
            for side in ax.spines.values():
                side.set_edgecolor("tab:red")
                side.set_linewidth(3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9) if title else None)
    return fig


def searcher(index, catalogue: Catalogue | None = None,
             same_category: bool = False, level: str = "product") -> SearchFn:
    """A gallery search function over any index of the protocol, by item id.

    same_category: only neighbours in the query product's category (needs ``catalogue``).
    level: the index's level; ``"image"`` ids are decoded for the catalogue and the hits.
    """
    if same_category and catalogue is None:
        raise ValueError("same_category=True needs the catalogue")
    item_ids.check_level(level)

    def search(item_id: int, k: int) -> list[Hit]:
        category = None
        if same_category:
            pid, _ = item_ids.product_of(item_id, level)
            category = int(catalogue.category_ids([pid])[0])
        # Up to k results: a small category pads the rest, which to_hits drops.
        return to_hits(index.search_by_id(item_id, k, category=category), level=level)

    return search


class Gallery:
    """Query + k neighbours, live in JupyterLab or static in papermill runs."""

    def __init__(
        self,
        images: ProductImages,
        search: SearchFn,
        queries: Sequence[int],
        k: int = 8,
        title: str = "",
        level: str = "product",
    ) -> None:
        self.images, self.search, self.queries, self.k, self.title = (
            images, search, [int(q) for q in queries], k, title)
        self.level = item_ids.check_level(level)

    def figure(self, item_id: int, k: int | None = None) -> plt.Figure:
        hits = self.search(int(item_id), k or self.k)
        title = self.title if hits else f"{self.title} (no neighbour to show)"
        return neighbours_figure(self.images, as_hit(item_id, self.level), hits, title)

    def widget(self):
        """The live view: a query dropdown and a k slider above the grid (ipywidgets)."""
        import ipywidgets as w
        from IPython.display import display

        pick = w.Dropdown(options=self.queries, description="query")
        k = w.IntSlider(value=self.k, min=1, max=20, description="k")
        out = w.Output()

        def redraw(_: object = None) -> None:
            with out:
                out.clear_output(wait=True)
                display(self.figure(pick.value, k.value))
                plt.close("all")

        pick.observe(redraw, "value")
        k.observe(redraw, "value")
        redraw()
        return w.VBox([w.HBox([pick, k]), out])

    def show(self, interactive: bool = True) -> None:
        """Display the widget (``interactive``) or one static grid per query."""
        from IPython.display import display

        if interactive:
            display(self.widget())
            return
        for pid in self.queries:
            display(self.figure(pid))
            plt.close("all")


__all__ = ["Gallery", "Hit", "ProductImages", "SearchFn", "as_hit", "neighbours_figure",
           "product_grid", "searcher", "to_hits"]
