"""What the apps run. Nothing below imports this package.

- `loader`: a run's artifacts (catalogue, vector stores, indexes) found and opened;
- `inputs`: user input checked (ids, k, method and category fields; uploaded photos),
  `RelatedError`, the base of the input errors (an app's 400);
- `recent`: `RecentlyViewed`, the products a browser session last viewed;
- `related`: `Related`, the query service (by product, by the recently viewed, by photo);
- `pages`: what a page shows beside the hits (labels, pictures, category names, picker).

Hits are `helpers.index.hits.Hit`. Import the modules themselves: this package re-exports
nothing, so `helpers.serve.inputs` and `helpers.serve.recent` stay light.
"""
