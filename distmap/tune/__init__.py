"""Studies: Ray Tune searches over any training config, one MLflow run per trial (``distmap tune``)."""
