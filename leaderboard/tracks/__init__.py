"""Curated content: datasets, reference models, tracks; ranking and charts of a track."""
