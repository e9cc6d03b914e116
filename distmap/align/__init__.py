"""Modality alignment and instance preserving: loss terms beside the link-prediction objective."""
