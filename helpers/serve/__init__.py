"""What the apps run: loading a run's artifacts, related products, uploads,
recently viewed. Nothing below imports this package."""
