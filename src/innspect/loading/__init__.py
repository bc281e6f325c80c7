"""Loading what users bring: models (specs, weights files, TorchScript), input files (images,
arrays) and data sources read by range."""
