"""Glance and Focus Matting: model, training, prediction and evaluation."""
