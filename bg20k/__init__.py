"""BG-20k-style background sets: resolution filter, near-duplicate removal, YOLO screening, split."""
