"""Face data: RecordIO, datasets, transforms, verification and IJB files, synthetic sets."""
